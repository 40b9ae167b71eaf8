import json

import numpy as np
import pytest

from unimir import Index, evaluate
from unimir.data.mbeir import InstructionTable, query_text, read_queries
from unimir.data.records import Modality
from unimir.encoders import Item
from unimir.errors import InvalidInputError
from unimir.eval import format_table, write_json
from unimir.eval.metrics import expected_hit_at_k
from unimir.ranking import Ranking


@pytest.fixture(scope="module")
def index(corpus, tiny_encoder, tmp_path_factory):
    return Index.build(corpus["pool"], tmp_path_factory.mktemp("e") / "shapes", encoder=tiny_encoder)


def test_eval_matches_a_brute_force_reference(index, corpus, tiny_encoder):
    (result,) = evaluate(index, [corpus["t2i"]], ks=(1, 5, 10))
    assert result.task_id == 0 and result.num_queries == 18 and result.pool_size == 18
    # reference: same instruction choice, plain numpy scores over image candidates, tie-aware hits
    table = InstructionTable.load(corpus["instructions"])
    queries = read_queries(corpus["t2i"])
    texts = [query_text(q.query_txt, table.choose(q.qid, 10, Modality.TEXT, Modality.IMAGE)) for q in queries]
    feats, _ = tiny_encoder.encode([Item(t) for t in texts], "query")
    images = np.flatnonzero(index.modality_codes == 0)
    scores = feats.fused() @ index.fused[images].T
    for k in (1, 5, 10):
        hits = []
        for q, s in zip(queries, scores):
            ranking = Ranking.from_scores(images, s)
            rel = np.array([index.candidates[i].did in q.pos_cand_list for i in ranking.indices])
            hits.append(expected_hit_at_k(ranking, rel, k))
        assert result.recall[str(k)] == pytest.approx(np.mean(hits), abs=1e-6)
    assert result.random == pytest.approx({"1": 1 / 18, "5": 5 / 18, "10": 10 / 18})


def test_qrels_override_and_missing_positives(index, corpus, tmp_path):
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("10:0 0 10:0 1 0\n10:0 0 99:1 1 0\n10:2 0 10:2 1 0\n")
    (result,) = evaluate(index, [corpus["t2i"]], qrels=[qrels], ks=(5,))
    assert result.num_queries == 2 and result.missing_positives == 1 and result.skipped_queries == 16


def test_every_mode_and_file_gets_an_entry_in_json(index, corpus, tmp_path):
    results = evaluate(index, [corpus["t2i"], corpus["i2t"]], ks=(1, 5), runs_dir=tmp_path / "runs")
    assert [(r.queries, r.task_id) for r in results] == [("mbeir_shapes_task0_test.jsonl", 0),
                                                         ("mbeir_shapes_task3_test.jsonl", 3)]
    write_json(results, tmp_path / "out.json")
    data = json.loads((tmp_path / "out.json").read_text())
    entry = data["results"][1]
    assert {"queries", "task_id", "mode", "num_queries", "recall"} <= set(entry)
    assert set(entry["recall"]) == {"1", "5"} and all(0 <= v <= 1 for v in entry["recall"].values())
    runs = sorted(p.name for p in (tmp_path / "runs").glob("*.run"))
    assert runs == ["mbeir_shapes_task0_test.task0.shapes.dense.run", "mbeir_shapes_task3_test.task3.shapes.dense.run"]
    first = (tmp_path / "runs" / runs[0]).read_text().splitlines()[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5] == "unimir-dense" and len(first) == 6  # TREC's six
    ties = (tmp_path / "runs" / runs[0].replace(".run", ".ties.tsv")).read_text().splitlines()
    assert ties[0] == "qid\trank\tdid\ttie_group" and ties[1].split("\t")[:3] == [first[0], "1", first[2]]
    table = format_table(results)
    assert "R@1" in table and "rand@5" in table and "T→I" in table and "I→T" in table


def test_trec_run_files_read_back_by_ir_measures(index, corpus, tmp_path):
    """The run files are standard six-column TREC: trec_eval (through ir_measures) reads them and, on a run
    without ties, its Success@K (M-BEIR's Recall@K is a hit rate) equals unimir's Recall@K."""
    ir_measures = pytest.importorskip("ir_measures")
    results = evaluate(index, [corpus["t2i"], corpus["i2t"]], ks=(1, 5, 10), runs_dir=tmp_path / "runs")
    qrels = [ir_measures.Qrel(q.qid, did, 1) for path in (corpus["t2i"], corpus["i2t"]) for q in read_queries(path)
             for did in q.pos_cand_list]
    for result in results:
        name = f"{corpus['t2i'].stem if result.task_id == 0 else corpus['i2t'].stem}.task{result.task_id}.shapes.dense"
        run_path = tmp_path / "runs" / f"{name}.run"
        assert all(len(line.split()) == 6 for line in run_path.read_text().splitlines())
        ties = [line.split("\t") for line in (tmp_path / "runs" / f"{name}.ties.tsv").read_text().splitlines()[1:]]
        groups = {(qid, group) for qid, _, _, group in ties}
        assert len(groups) == len(ties), "this check needs a tie-free run"
        run = list(ir_measures.read_trec_run(str(run_path)))
        measures = [ir_measures.Success @ k for k in (1, 5, 10)]
        theirs = ir_measures.calc_aggregate(measures, [q for q in qrels if q.query_id in {r.query_id for r in run}],
                                            run)
        for k, measure in zip((1, 5, 10), measures):
            assert theirs[measure] == pytest.approx(result.recall[str(k)], abs=1e-9), (result.task, k)
        assert 0 < result.recall["10"] < 1 or result.recall["1"] < 1  # not a trivially perfect or empty run


def test_eval_counts_dropped_queries_and_checks_outputs_first(index, corpus, tmp_path):
    from unimir.data.problems import Problems
    from unimir.errors import InvalidInputError

    lines = corpus["t2i"].read_text().splitlines()
    bad = tmp_path / "q.jsonl"
    bad.write_text("\n".join(lines[:3] + ['{"qid": "x", "task_id": 0', lines[0]]) + "\n")  # bad line + duplicate
    problems = Problems()
    (result,) = evaluate(index, [bad], root=corpus["root"], ks=(1,), problems=problems)
    assert result.num_queries == 3 and result.unreadable_lines == 2 and result.dropped_queries == 2
    assert len(problems) == 2 and "dropped" in format_table([result])
    write_json([result], tmp_path / "r.json", problems)
    body = json.loads((tmp_path / "r.json").read_text())
    assert body["dropped_queries"] == 2 and body["results"][0]["dropped_queries"] == 2 and len(body["problems"]) == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="a file is in the way"):
        evaluate(index, [bad], runs_dir=tmp_path / "file" / "runs")


def test_without_the_modality_filter_every_candidate_is_searched(index, corpus, tmp_path):
    (filtered,) = evaluate(index, [corpus["t2i"]], ks=(1, 5), runs_dir=tmp_path / "f")
    (union,) = evaluate(index, [corpus["t2i"]], ks=(1, 5), modality_filter=False, runs_dir=tmp_path / "u")
    assert filtered.pool_size == 18 and union.pool_size == 36
    assert union.random == pytest.approx({"1": 1 / 36, "5": 5 / 36})
    texts = {c.did for c in index.candidates if c.modality == Modality.TEXT}
    ranked = lambda d: {line.split()[2] for f in d.glob("*.run") for line in f.read_text().splitlines()}  # noqa: E731
    assert not ranked(tmp_path / "f") & texts and ranked(tmp_path / "u") & texts


def test_evaluate_takes_one_file_as_a_path_and_checks_its_numbers(index, corpus):
    (one,) = evaluate(index, str(corpus["t2i"]), ks=np.array([1, 5]))
    (same,) = evaluate(index, [corpus["t2i"]], ks=(1, 5))
    assert one.recall == same.recall and one.num_queries == 18
    for kwargs, message in ((dict(ks=(0,)), "ks must be"), (dict(ks=()), "ks must be"),
                            (dict(batch_size=0), "batch_size must be")):
        with pytest.raises(InvalidInputError, match=message):
            evaluate(index, [corpus["t2i"]], **kwargs)
