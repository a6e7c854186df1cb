"""The README's main job, ``vaedeblend demo``, end to end on a few blends."""

from vaedeblend.cli import main
from vaedeblend.demo import DEMO_INSTRUMENTS, REFINED_IN_DEMO
from vaedeblend.pretrained import is_shipped


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--n", "12", "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    assert "lsst: no deblending" in printed and "lsst+euclid: no deblending" in printed
    for name in DEMO_INSTRUMENTS:
        assert (f"{name}: deblended" in printed) == is_shipped(name)
        refined_row = is_shipped(name) and name in REFINED_IN_DEMO
        assert (f"{name}: deblended, refined" in printed) == refined_row
    assert (tmp_path / "demo" / "comparison" / "comparison.md").exists()
    assert (tmp_path / "demo" / "blends.png").stat().st_size > 10_000
    reports = list((tmp_path / "demo" / "reports").glob("*/metrics.json"))
    rows = sum(is_shipped(n) * (1 + (n in REFINED_IN_DEMO)) for n in DEMO_INSTRUMENTS)
    assert len(reports) == 2 + rows
