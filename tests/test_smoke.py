import numpy as np

import anns
from anns.evaluation import exact_knn, recall_at


def test_build_then_search_reaches_recall(tmp_path, clustered):
    base, queries = clustered
    anns.build(tmp_path / "c", base)
    truth, _ = exact_knn(base, queries, 10)
    with anns.Collection.open(tmp_path / "c") as coll:
        result = coll.search(queries, 10)
    assert result.ids.shape == (len(queries), 10)
    assert recall_at(result.ids, truth, 10) >= 0.95
    assert result.ids.dtype == np.int64
