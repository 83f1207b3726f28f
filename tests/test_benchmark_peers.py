"""Tests of benchmarks.peers without running a model: peer discovery and its install text, the
child's result line, and the records a run writes."""
import argparse
import importlib.util
import json

import pytest

from benchmarks import peers
from benchmarks import records


def _args(**overrides):
  values = {"height": 480, "width": 854, "objects": 3, "warmup": 2, "frames": 4,
            "repeats": 3, "no_stages": False}
  values.update(overrides)
  return argparse.Namespace(**values)


def test_missing_peers_are_listed_with_their_install_commands():
  only_torch = lambda module: object() if module == "torch" else None
  found, missing = peers.discover(only_torch)

  assert found == []
  assert [(peer.name, absent) for peer, absent in missing] == [
      ("cutie", ["cutie", "omegaconf", "einops"]),
      ("deaot", ["torchvision", "aot", "cv2", "PIL"]),
      ("stcn", ["torchvision", "stcnbuf"])]
  text = peers.install_text(missing)
  for peer in peers.PEERS:
    assert f"- {peer.name} ({peer.variant}): missing " in text
    for command in peer.install:
      assert f"`{command}`" in text
  assert "`pip install --no-deps rf-cutie` && `pip install omegaconf einops`" in text
  assert text.endswith(peers.TORCH_NOTE) and "pip install torch==2.13.0" in text


def test_discovery_of_this_environment_and_list(capsys):
  found, missing = peers.discover()
  for peer in peers.PEERS:
    importable = all(importlib.util.find_spec(module) for module in peer.modules)
    assert (peer in found) == importable
  assert peers.discover(lambda module: object()) == (list(peers.PEERS), [])
  assert peers.install_text([]) == ""

  assert peers.main(["--list"]) == 0
  printed = capsys.readouterr().out
  assert printed.startswith("Peers found: " + (", ".join(p.name for p in found) or "none"))
  for peer, _ in missing:
    assert f"`{peer.install[0]}`" in printed


def test_child_result_line_and_command():
  result = {"variant": "v", "wall": [1.0], "cpu": [2.0]}
  stdout = (f"log line\n{peers.RESULT_PREFIX}{json.dumps({'variant': 'old'})}\n"
            f"{peers.RESULT_PREFIX}{json.dumps(result)}\ntrailing log\n")
  assert peers.parse_result(stdout) == result
  assert peers.parse_result("no result\n") is None

  command = peers.child_command("cutie", "float32", _args(no_stages=True))
  assert command[1:4] == ["-m", "benchmarks.peers", "--child=cutie"]
  assert "--frames=4" in command and command[-1] == "--no_stages"
  assert "--no_stages" not in peers.child_command("ours", "bfloat16", _args())


def test_records_of_a_run_leave_out_the_warmup_and_compare_with_the_fastest_peer():
  args = _args()
  ours = {"variant": peers.OURS_VARIANT, "dtype": "float32", "device": "cpu",
          "version": "jax 0.10.2", "wall": [30.0, 20.0, 2.0, 4.0, 3.0, 3.0],
          "cpu": [40.0, 30.0, 2.0, 2.0, 2.0, 2.0],
          "stages": {"embed": 1500.0, "matching": 600.0, "head": 300.0}}
  cutie = {"variant": peers.PEERS[0].variant, "dtype": "float32", "device": "cpu",
           "threads": 2, "version": "rf-cutie 1.0.1, torch 2.13.0+cpu",
           "wall": [9.0, 9.0, 5.0, 5.0, 5.0, 5.0], "cpu": [9.0, 9.0, 3.0, 3.0, 3.0, 3.0]}
  summary = peers.summarize(ours, args.warmup)
  assert summary == {"cpu": 2.0, "wall median": 3.0, "wall mean": 3.0, "cores": 2.0 / 3.0}
  with pytest.raises(ValueError, match="no timed frame"):
    peers.summarize(ours, 6)

  run = records.Run("peers", ["--frames=4"], write=False)
  parts, figures, params = peers.side_by_side("cutie", cutie, peers.summarize(cutie, 2), args)
  peer = run.append(parts, figures, kind="speed", table=peers.SIDE_BY_SIDE, params=params)
  fastest = (cutie["variant"], peers.comparison(peers.summarize(cutie, 2), "cpu"))
  parts, figures, params = peers.side_by_side("ours", ours, summary, args, fastest)
  mine = run.append(parts, figures, kind="speed", table=peers.SIDE_BY_SIDE, params=params)
  stages = run.append(["stages", "float32", "480x854", "3 obj"],
                      peers.stage_figures(ours, summary), kind="speed", table=peers.STAGES)

  for record in (peer, mine, stages):
    assert records.problems(record) == []
    assert record["command"] == "python -m benchmarks.peers --frames=4"
  assert peer["case"] == "cpu/cutie/float32/480x854/3-obj"
  assert peer["params"]["threads"] == 2 and "speed-up over fastest peer" not in peer["figures"]
  assert mine["case"] == "cpu/ours/float32/480x854/3-obj"
  assert mine["params"]["fastest peer"] == cutie["variant"]
  assert mine["figures"]["speed-up over fastest peer"] == {"value": 1.5, "unit": "x"}
  assert mine["figures"]["CPU time"] == {"value": 2.0, "unit": "s/frame"}
  assert mine["figures"]["throughput"]["value"] == pytest.approx(1 / 3, rel=1e-5)
  figures = stages["figures"]
  assert figures["frame"]["value"] == 3000 and figures["rest (host, fusion)"]["value"] == 600
  shares = [value["value"] for name, value in figures.items() if name.endswith("share")]
  assert shares == [50, 20, 10, 20]
