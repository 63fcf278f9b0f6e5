"""`nanoseek ablate`: the cheap claims end to end in --quick mode, the verdict rule, claim-id errors."""

import json

import pytest

from nanoseek.ablate import (CLAIMS, FAILS, HOLDS, INCONCLUSIVE, NOT_RUN, VERDICTS, Record, judge, main_ablate,
                             markdown, parse_claims)

FIELDS = {"claim", "title", "seed_number", "measured", "verdict", "why", "details"}


def test_quick_run_writes_json_and_markdown(tmp_path, capsys):
    assert main_ablate(["--claims", "C2,C5,C11,C12", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "ablate.json").read_text())
    recs = data["claims"]
    assert [r["claim"] for r in recs] == ["C2", "C5", "C11", "C12"]
    for r in recs:
        assert FIELDS <= set(r), r["claim"]
        assert r["verdict"] in VERDICTS and r["verdict"] != NOT_RUN, (r["claim"], r["why"])
        assert r["seed_number"] and r["why"] and r["measured"]
        assert "traceback" not in r["details"], r["details"]
        for m in r["measured"].values():
            assert set(m) == {"value", "unit"}
    md = (tmp_path / "ablate.md").read_text()
    assert "| claim | title | seed's number | measured | verdict |" in md
    for r in recs:
        assert f"| {r['claim']} |" in md
    assert "| C12 |" in capsys.readouterr().out  # the table is printed too
    by = {r["claim"]: r for r in recs}
    assert by["C2"]["measured"]["v3_cache_saved_vs_mha"]["value"] > 0.9  # 576 vs 40960 elements per layer
    assert 0.3 < by["C12"]["measured"]["v3_implied_mfu_6n_bf16"]["value"] < 0.4
    assert by["C5"]["measured"]["useful_fraction_packed"]["value"] > by["C5"]["measured"]["useful_fraction_padded"]["value"]


@pytest.mark.parametrize("value,target,better,noise,want", [
    (0.94, 0.80, "higher", 0.0, HOLDS),
    (0.50, 0.80, "higher", 0.0, FAILS),
    (0.79, 0.80, "higher", 0.02, INCONCLUSIVE),
    (0.62, 1 / 3, "lower", 0.05, FAILS),
    (0.001, 0.0025, "lower", 0.0, HOLDS),
    (None, 0.5, "lower", 0.0, NOT_RUN),
])
def test_judge(value, target, better, noise, want):
    assert judge(value, target, better, noise) == want


def test_judge_rejects_bad_direction_and_record_rejects_bad_verdict():
    with pytest.raises(ValueError):
        judge(1.0, 1.0, "sideways")
    with pytest.raises(ValueError):
        Record("C1", "t", "s", verdict="maybe")


def test_unknown_claim_is_an_error_naming_it(capsys):
    with pytest.raises(ValueError, match="C99"):
        parse_claims("C1,C99")
    with pytest.raises(SystemExit):
        main_ablate(["--claims", "C2,X7"])
    assert "X7" in capsys.readouterr().err


def test_registry_covers_c1_to_c12_and_markdown_escapes():
    assert list(CLAIMS) == [f"C{i}" for i in range(1, 13)]
    assert parse_claims("c2, c5") == ["C2", "C5"]
    md = markdown([Record("C7", "a|b", "x", verdict=NOT_RUN, headline="n/a", why="needs ranks")])
    assert "a\\|b" in md and "not run" in md
