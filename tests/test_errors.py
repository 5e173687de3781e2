"""The exception tree: every class an AnnsError, subclassing the builtin a caller expects and
naming its gRPC status; the module docstring draws the whole tree."""

from __future__ import annotations

import inspect

import pytest

import anns.errors as E

TREE = [
    # (class, direct parent in the tree, builtins it must also be, gRPC status)
    (E.InvalidArgumentError, E.AnnsError, (ValueError,), "INVALID_ARGUMENT"),
    (E.DimensionMismatchError, E.InvalidArgumentError, (ValueError,), "INVALID_ARGUMENT"),
    (E.NonFiniteError, E.InvalidArgumentError, (ValueError,), "INVALID_ARGUMENT"),
    (E.DTypeError, E.InvalidArgumentError, (ValueError, TypeError), "INVALID_ARGUMENT"),
    (E.DuplicateIdsError, E.InvalidArgumentError, (ValueError,), "INVALID_ARGUMENT"),
    (E.LimitExceededError, E.InvalidArgumentError, (ValueError,), "INVALID_ARGUMENT"),
    (E.InputFormatError, E.InvalidArgumentError, (ValueError,), "INVALID_ARGUMENT"),
    (E.IncompatibleModelError, E.InvalidArgumentError, (ValueError,), "INVALID_ARGUMENT"),
    (E.NotFoundError, E.AnnsError, (KeyError,), "NOT_FOUND"),
    (E.CollectionNotFoundError, E.NotFoundError, (KeyError,), "NOT_FOUND"),
    (E.AlreadyExistsError, E.AnnsError, (), "ALREADY_EXISTS"),
    (E.IdExistsError, E.AlreadyExistsError, (), "ALREADY_EXISTS"),
    (E.CollectionExistsError, E.AlreadyExistsError, (), "ALREADY_EXISTS"),
    (E.FailedPreconditionError, E.AnnsError, (RuntimeError,), "FAILED_PRECONDITION"),
    (E.EmptyCollectionError, E.FailedPreconditionError, (RuntimeError,), "FAILED_PRECONDITION"),
    (E.CollectionClosedError, E.FailedPreconditionError, (RuntimeError,), "FAILED_PRECONDITION"),
    (E.CorruptCollectionError, E.AnnsError, (OSError,), "DATA_LOSS"),
    (E.FormatVersionError, E.CorruptCollectionError, (OSError,), "DATA_LOSS"),
    (E.IncompleteBuildError, E.CorruptCollectionError, (OSError,), "DATA_LOSS"),
]


@pytest.mark.parametrize(("cls", "parent", "builtins", "status"), TREE,
                         ids=[c.__name__ for c, *_ in TREE])
def test_tree(cls: type, parent: type, builtins: tuple[type, ...], status: str) -> None:
    assert issubclass(cls, parent) and issubclass(cls, E.AnnsError)
    for builtin in builtins:
        assert issubclass(cls, builtin)
    assert cls.grpc_status == status  # type: ignore[attr-defined]
    assert cls.__name__ in (E.__doc__ or ""), "the docstring tree names every class"
    assert inspect.getdoc(cls)


def test_the_tree_covers_every_class() -> None:
    defined = {
        value for value in vars(E).values()
        if inspect.isclass(value) and issubclass(value, E.AnnsError) and value is not E.AnnsError
    }
    assert defined == {cls for cls, *_ in TREE}


def test_not_found_message_is_not_repr_quoted() -> None:
    err = E.CollectionNotFoundError("no collection at /x")
    assert str(err) == "no collection at /x"
    assert f"{err}" == "no collection at /x"
