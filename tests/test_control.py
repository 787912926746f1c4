"""``--task control``: environments with changed dynamics, a policy fitted, transferred,
resumed, saved, loaded and rolled out (Stable-Baselines3 SAC, tiny step counts: plumbing,
not learning; benchmarks/control_transfer.py measures the learning)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("mujoco")

from headstart.data.envs import EnvSpec, make_env, parse_changes, parse_env  # noqa: E402
from headstart.data.images import DataError  # noqa: E402
from headstart.tasks import ControlEstimator, estimator_class, serving_for  # noqa: E402

TINY = {"steps": 160, "eval_every": 80, "eval_episodes": 1, "learning_starts": 50, "batch_size": 32}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny SAC policy fitted on Pendulum-v1 (its run directory)."""
    run = tmp_path_factory.mktemp("control") / "source"
    ControlEstimator(env="Pendulum-v1", run_dir=run, head_hidden=(16, 16), **TINY).fit()
    return run


# ---------------------------------------------------------------- environments
def test_changes_are_parsed_and_bad_ones_named():
    assert parse_changes("torso_mass=1.5, friction=0.5") == (("torso_mass", 1.5), ("friction", 0.5))
    spec = parse_env("Pendulum-v1[g=14]", "m=1.2")
    assert spec == EnvSpec("Pendulum-v1", (("g", 14.0), ("m", 1.2)))
    assert spec.label == "Pendulum-v1[g=14,m=1.2]"
    with pytest.raises(DataError, match="'g' is not NAME=VALUE"):
        parse_changes("g")
    with pytest.raises(DataError, match="'heavy' is not a number"):
        parse_changes("g=heavy")
    with pytest.raises(DataError, match="set twice"):
        parse_changes("g=1,g=2")


def test_unknown_env_id_is_a_clear_error():
    with pytest.raises(DataError, match="unknown environment 'Pendulum-v9'.*Pendulum-v1"):
        make_env(EnvSpec("Pendulum-v9"))


def test_classic_change_sets_the_attribute_and_an_unknown_one_is_named():
    env, applied = make_env(parse_env("Pendulum-v1", "g=14,m=1.3"))
    assert (env.unwrapped.g, env.unwrapped.m) == (14.0, 1.3)
    assert applied[0] == {"name": "g", "before": 10.0, "after": 14.0}
    with pytest.raises(DataError, match="no parameter 'gravity'.*numeric parameters: .*\\bg\\b"):
        make_env(parse_env("Pendulum-v1", "gravity=14"))


def test_mujoco_changes_scale_the_model():
    base, _ = make_env(EnvSpec("InvertedPendulum-v5"))
    env, applied = make_env(parse_env("InvertedPendulum-v5", "pole_mass=2,gear=0.5,gravity=1.5"))
    m0, m1 = base.unwrapped.model, env.unwrapped.model
    pole = 2  # bodies: world, cart, pole
    assert m1.body_mass[pole] == pytest.approx(2 * m0.body_mass[pole])
    assert m1.body_inertia[pole] == pytest.approx(2 * m0.body_inertia[pole])
    assert m1.body_mass[1] == pytest.approx(m0.body_mass[1])  # the cart is untouched
    assert m1.actuator_gear[0, 0] == pytest.approx(0.5 * m0.actuator_gear[0, 0])
    assert m1.opt.gravity[2] == pytest.approx(1.5 * m0.opt.gravity[2])
    assert [a["name"] for a in applied] == ["pole_mass", "gear", "gravity"]
    with pytest.raises(DataError, match="no parameter 'torso_mass'.*pole_mass"):
        make_env(parse_env("InvertedPendulum-v5", "torso_mass=1.5"))
    with pytest.raises(DataError, match="scales a value; give > 0"):
        make_env(parse_env("InvertedPendulum-v5", "gear=-1"))
    with pytest.raises(DataError, match="give > 0"):
        make_env(parse_env("InvertedPendulum-v5", "pole_mass=0"))
    # a disabled joint: its motor's gear scaled to 0, the other motors untouched
    hop0 = make_env(EnvSpec("Hopper-v5"))[0].unwrapped.model
    hop = make_env(parse_env("Hopper-v5[foot_joint_gear=0]"))[0].unwrapped.model
    assert hop.actuator_gear[2, 0] == 0 and hop.actuator_gear[0, 0] == hop0.actuator_gear[0, 0]


# ---------------------------------------------------------------- fit, save, load, use
def test_fit_saves_a_policy_that_loads_and_rolls_out(source):
    config = json.loads((source / "config.json").read_text())
    assert config["task"] == "control" and config["policy"]["algo"] == "sac"
    assert (source / "model.safetensors").is_file() and not (source / "checkpoint").exists()
    m = config["metrics"]
    assert [c["steps"] for c in m["curve"]] == [0, 80, 160]
    est = estimator_class("control").load(source)
    actions = est.predict(np.zeros((4, 3)))
    assert actions.shape == (4, 1) and np.all(np.abs(actions) <= 2.0)
    again = est.evaluate()  # held-out seeds, deterministic policy: the fit's own figure
    assert again["mean_return"] == pytest.approx(m["validation"]["mean_return"])
    assert again["episodes"] == 1 and again["mean_length"] == 200
    with pytest.raises(ValueError, match=r"this policy reads \(3,\)"):
        est.predict(np.zeros((2, 4)))


def test_params_clone_and_bad_strategy():
    from sklearn.base import clone

    est = ControlEstimator(env="Pendulum-v1", strategy="lp_ft", steps=10)
    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin is not est
    with pytest.raises(ValueError, match="not a control strategy.*zero_shot"):
        ControlEstimator(env="Pendulum-v1", strategy="feature_extract").fit()
    with pytest.raises(DataError, match="no target environment"):
        ControlEstimator().fit()


def _state(run):
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


def test_zero_shot_keeps_the_source_and_its_normalisation(source, tmp_path):
    est = ControlEstimator(
        backbone=str(source),
        strategy="zero_shot",
        env="Pendulum-v1",
        env_set="g=14",
        run_dir=tmp_path / "z",
        eval_episodes=1,
    ).fit()
    a, b = _state(source), _state(tmp_path / "z")
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert est.stages_ == [] and est.metrics_["zero_shot"]["steps"] == 0
    assert est.metrics_["env_changes"][0] == {"name": "g", "before": 10.0, "after": 14.0}


def test_partial_freezes_the_feature_layers_lp_ft_trains_the_value_first(source, tmp_path):
    est = ControlEstimator(
        backbone=str(source),
        strategy="partial",
        env="Pendulum-v1",
        env_set="g=14",
        run_dir=tmp_path / "p",
        **TINY,
    ).fit()
    a, b = _state(source), _state(tmp_path / "p")
    feats = [k for k in a if k.startswith("policy.actor.latent_pi")]
    assert feats and all(np.array_equal(a[k], b[k]) for k in feats)
    assert not np.array_equal(a["policy.actor.mu.weight"], b["policy.actor.mu.weight"])
    assert not np.array_equal(a["policy.critic.qf0.0.weight"], b["policy.critic.qf0.0.weight"])
    assert est.stages_[0]["trainable_params"] < est.stages_[0]["total_params"]
    # the observation statistics came from the source and kept adapting
    assert not np.array_equal(a["obs_norm.mean"], b["obs_norm.mean"])
    lp = ControlEstimator(
        backbone=str(source),
        strategy="lp_ft",
        env="Pendulum-v1",
        env_set="g=14",
        adapt_norm=False,
        **TINY,
    ).fit()
    assert lp.norm_ is not None and np.array_equal(lp.norm_.mean, a["obs_norm.mean"].numpy())
    assert [s["stage"] for s in lp.stages_] == ["value", "finetune"]
    assert [s["steps"] for s in lp.stages_] == [72, 88]  # warm-up 50 + 20% of the other 110
    assert lp.stages_[0]["trainable_params"] < lp.stages_[1]["trainable_params"]


def test_mismatched_source_is_refused(source):
    with pytest.raises(DataError, match="cannot act in InvertedPendulum-v5: observations.*reads"):
        ControlEstimator(backbone=str(source), env="InvertedPendulum-v5", steps=10).fit()
    with pytest.raises(DataError, match="not a control run directory"):
        ControlEstimator(backbone="runs/nowhere", env="Pendulum-v1", steps=10).fit()


class _Stop(Exception):
    pass


def test_resume_goes_on_from_the_checkpoint(tmp_path):
    run = tmp_path / "r"
    settings = dict(env="Pendulum-v1", run_dir=run, head_hidden=(16, 16), **TINY)
    seen = []

    def crash(point):
        seen.append(point["steps"])
        if point["steps"] == 80:
            raise _Stop

    with pytest.raises(_Stop):
        ControlEstimator(**settings).fit(callbacks=[crash])
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["steps_done"] == 80 and (run / "checkpoint" / "model.zip").is_file()
    est = ControlEstimator(**settings).fit(resume=True)
    assert [c["steps"] for c in est.metrics_["curve"]] == [0, 80, 160]
    assert est.metrics_["curve"][1] == state["curve"][1]  # the first half was not redone
    assert not (run / "checkpoint").exists()
    with pytest.raises(ValueError, match="other settings"):
        run2 = tmp_path / "r2"
        with pytest.raises(_Stop):
            ControlEstimator(**{**settings, "run_dir": run2}).fit(callbacks=[crash])
        ControlEstimator(**{**settings, "run_dir": run2, "seed": 3}).fit(resume=True)


def test_serving_reads_envs_and_rolls_out(source, tmp_path):
    from headstart.config import FitConfig

    serving = serving_for("control")
    cfg = FitConfig(env="Pendulum-v1", env_set="g=12")
    assert serving.open_labeled(None, cfg) == EnvSpec("Pendulum-v1", (("g", 12.0),))
    with pytest.raises(DataError, match="two target environments"):
        serving.open_labeled("Hopper-v5", cfg)
    out = tmp_path / "episodes.csv"
    line = serving.predict_to_csv(source, ["Pendulum-v1[g=12]"], out)
    rows = out.read_text().splitlines()
    assert rows[0] == "env,seed,return,length" and rows[1].startswith("Pendulum-v1[g=12],")
    assert "wrote 1 episodes" in line


def test_onnx_export_gives_the_policys_actions(source, tmp_path):
    pytest.importorskip("onnxruntime")
    from headstart.export import export_model

    result = export_model(source, "onnx", out=tmp_path / "policy.onnx")
    assert result.max_abs_diff < 1e-4 and result.batch_sizes == [32, 1]
    import onnxruntime as ort

    est = ControlEstimator.load(source)
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    session = ort.InferenceSession(result.path, providers=["CPUExecutionProvider"])
    got = session.run(["action"], {"observation": obs})[0]
    assert np.abs(got - est.predict(obs)).max() < 1e-4


def test_command_line_evaluates_and_refuses_missing_data(source, capsys):
    from headstart.cli import main

    assert main(["evaluate", str(source), "Pendulum-v1[g=12]"]) == 0
    out = capsys.readouterr().out
    assert "held-out episodes" in out and "Pendulum-v1[g=12]" in out
    assert main(["fit", "--task", "image"]) == 2
    assert "give the training DATA" in capsys.readouterr().err
    assert main(["evaluate", str(source), "Pendulum-v1[gravity=3]"]) == 2
    assert "no parameter 'gravity'" in capsys.readouterr().err


# ---------------------------------------------------------------- report, frames, study
def test_fit_writes_a_report_with_frames_of_the_source_and_the_adapted_policy(source, tmp_path):
    import base64
    import io

    from PIL import Image

    from headstart.cli import main

    run = tmp_path / "t"
    args = ["fit", "--task", "control", "--env", "Pendulum-v1", "--env-set", "g=14"]
    args += ["--backbone", str(source), "--out", str(run), "--steps", "100", "--eval-every", "50"]
    assert main([*args, "--eval-episodes", "1", "--learning-starts", "50"]) == 0
    page = (run / "report.html").read_text()
    assert "the source as it is: return" in page and "adapted: return" in page
    assert "<svg" in page and "g</td>" in page  # the curve, the change made
    pngs = [base64.b64decode(p.split("'")[0]) for p in page.split("data:image/png;base64,")[1:]]
    frames = [np.asarray(Image.open(io.BytesIO(p))) for p in pngs]
    assert len(frames) == 12 and all(f.shape == (200, 200, 3) for f in frames)
    assert np.abs(frames[6].astype(int) - frames[7].astype(int)).max() > 0  # it moves
    # the film is evaluate's first held-out episode, replayed
    est = ControlEstimator.load(run)
    film = est.films()["adapted"]
    assert film["return"] == pytest.approx(est.evaluate(episodes=1)["returns"][0], abs=1e-2)
    assert [s for s, _ in film["frames"]] == [0, 40, 80, 120, 160, 200]


def test_an_env_that_cannot_render_gives_a_reason_not_an_error(source):
    from headstart.tasks.control.frames import episode_frames

    class NoPictures:  # what a user's env without rgb_array rendering does
        def __init__(self):
            import gymnasium as gym

            self.env = gym.make("Pendulum-v1")
            self.spec = self.env.spec
            self.action_space = self.env.action_space

        def reset(self, seed=None):
            return self.env.reset(seed=seed)

        def step(self, a):
            return self.env.step(a)

        def render(self):
            return None

        def close(self):
            self.env.close()

    import headstart.tasks.control.frames as frames

    est = ControlEstimator.load(source)
    real = frames._render_env
    frames._render_env = lambda spec: NoPictures()
    try:
        film = episode_frames(est._act, parse_env("Pendulum-v1"), 3, est.norm_)
    finally:
        frames._render_env = real
    assert "rendered nothing" in film["error"]


def _curve(points):
    return [{"steps": s, "mean_return": r, "std_return": 5.0} for s, r in points]


def test_study_answers_in_env_steps_and_flags_a_source_that_hurts():
    from headstart.tasks.control.study import summarize

    scratch = [{"curve": _curve([(0, -1000), (100, -900), (200, -500), (300, -200)])}] * 3
    good = [{"curve": _curve([(0, -600), (100, -150)]), "episodes": 5} for _ in range(3)]
    bad = [{"curve": _curve([(0, -1400), (100, -1300 + 10 * i)]), "episodes": 5} for i in range(3)]
    for r in scratch:
        r["episodes"] = 5
    s = summarize({"finetune": good, "lp_ft": bad, "scratch": scratch}, 100, 300)
    fine, lp = s["strategies"]
    assert fine["steps_to_scratch_final"] == 100 and fine["steps_ratio"] == pytest.approx(1 / 3)
    assert fine["scratch_steps_to_match"] is None and fine["beats_zero_shot"]
    assert not fine["negative_transfer"] and s["best"] == "finetune"
    assert lp["negative_transfer"] and lp["scratch_at_same_steps"] == -900
    assert "NEGATIVE TRANSFER" in lp["line"] and not s["negative_transfer"]
    assert s["verdict"].startswith("Transfer pays") and s["warning"] is None
    assert s["jumpstart"]["value"] == 400 and not s["jumpstart"]["negative"]
    s = summarize({"lp_ft": bad, "scratch": scratch}, 100, 300)
    assert s["negative_transfer"] and s["verdict"].startswith("Negative transfer")
    # a source worse than an untrained policy at the start: flagged even where it recovers
    assert s["jumpstart"]["negative"] and "worse than an untrained policy" in s["warning"]
    late = [{"curve": _curve([(0, -1400), (100, -700)]), "episodes": 5} for _ in range(3)]
    s = summarize({"finetune": late, "scratch": scratch}, 100, 300)
    assert not s["negative_transfer"] and s["verdict"].startswith("Transfer is ahead")
    assert "does not reach what scratch reaches with 300 steps" in s["verdict"]
    assert s["jumpstart"]["negative"]
    # one seed, one episode, no spread: the noise is unknown, nothing is flagged
    one = [{"curve": [{**p, "std_return": 0.0} for p in bad[0]["curve"]], "episodes": 1}]
    sc = [{"curve": [{**p, "std_return": 0.0} for p in scratch[0]["curve"]], "episodes": 1}]
    s = summarize({"lp_ft": one, "scratch": sc}, 100, 300)
    assert not s["negative_transfer"] and "noise unknown" in s["strategies"][0]["line"]


def test_study_command_runs_strategies_against_scratch_and_reruns_skip(source, tmp_path, capsys):
    from headstart.cli import main

    out = tmp_path / "study"
    args = ["study", "--task", "control", "--env", "Pendulum-v1", "--env-set", "g=14"]
    args += ["--model", str(source), "--steps", "60", "--scratch-steps", "120", "--out", str(out)]
    args += ["--strategies", "finetune", "--eval-every", "60", "--eval-episodes", "2"]
    assert main([*args, "--learning-starts", "30", "--batch-size", "32"]) == 0
    printed = capsys.readouterr().out
    assert "finetune:" in printed and "report:" in printed
    study = json.loads((out / "study.json").read_text())
    assert study["scratch_steps"] == 120 and [p["steps"] for p in study["scratch_curve"]] == [
        0,
        60,
        120,
    ]
    scratch = json.loads((out / "runs" / "scratch-s0" / "config.json").read_text())
    assert scratch["strategy"] == "scratch" and scratch["policy"]["net_arch"] == [16, 16]
    page = (out / "report.html").read_text()
    assert "finetune (60 steps): return" in page and "scratch (120 steps): return" in page
    stamp = (out / "runs" / "scratch-s0" / "model.safetensors").stat().st_mtime_ns
    assert main([*args, "--learning-starts", "30", "--batch-size", "32"]) == 0
    assert (out / "runs" / "scratch-s0" / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((out / "study.json").read_text())["strategies"] == study["strategies"]
    assert main(["study", "--task", "control", "--env", "Pendulum-v1", "--model", "nope"]) == 2
    assert "is not a control run" in capsys.readouterr().err
    assert main(["study", "--task", "image"]) == 2
    assert "give the labelled DATA" in capsys.readouterr().err


def test_a_setting_added_at_its_default_keeps_finished_runs_finished(monkeypatch):
    from headstart.config import FitConfig

    est = ControlEstimator(env="Pendulum-v1", steps=100)
    cfg, spec = est.resolved_config(), parse_env("Pendulum-v1")
    before = est._fingerprint(cfg, spec)
    real = FitConfig.to_dict
    monkeypatch.setattr(FitConfig, "to_dict", lambda self: {**real(self), "new_knob": 1})
    assert est._fingerprint(cfg, spec) == before  # a later version's new field, at its default
    assert est._fingerprint(cfg.replace(lr=1e-3), spec) != before
