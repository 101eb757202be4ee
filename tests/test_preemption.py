"""Preemption: the signal flag, the driver loop's stop-after-step-with-checkpoint, and the Ray
node-join wait of the SLURM bootstrap (the real SLURM path is tests/slurm/)."""
from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest

from megatron_brrm.preemption import REQUEUE_EXIT_CODE, PreemptionHandler
from megatron_brrm.train import GRPOTrainer
from megatron_brrm.workers.ray_nodes import NodesMissingError, wait_for_nodes


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_sets_the_flag_and_handlers_are_restored(sig):
    before = signal.getsignal(sig)
    with PreemptionHandler() as h:
        assert not h.requested
        os.kill(os.getpid(), sig)  # would end the process without the handler
        assert h.requested and h.received == signal.Signals(sig).name
        os.kill(os.getpid(), signal.SIGUSR1)  # a second signal keeps the first name
        assert h.received == signal.Signals(sig).name
    assert signal.getsignal(sig) == before
    assert REQUEUE_EXIT_CODE == 3


def test_install_again_takes_the_signal_back_and_restores_the_original():
    original = signal.getsignal(signal.SIGTERM)
    h = PreemptionHandler().install()
    try:
        signal.signal(signal.SIGTERM, lambda *a: None)  # what ray.init does in the driver
        h.install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert h.received == "SIGTERM"
    finally:
        h.uninstall()
    assert signal.getsignal(signal.SIGTERM) == original


class _FakeTrainer:
    """Just what GRPOTrainer.fit touches; every step and save is recorded."""

    DESC, PROGRESS = GRPOTrainer.DESC, GRPOTrainer.PROGRESS

    def __init__(self, max_steps, save_every, stop_after=None, step=0):
        self.cfg = SimpleNamespace(grpo=SimpleNamespace(max_num_steps=max_steps, val_every_n_steps=100),
                                   checkpoint=SimpleNamespace(save_dir="ckpt", save_every_n_steps=save_every))
        self.val_pairs, self.step, self.saved, self.logged = [], step, [], []
        self.metrics = SimpleNamespace(log=lambda s, m: self.logged.append(s))
        self.stop_after = stop_after

    def train_step(self):
        return {}

    def save(self):
        self.saved.append(self.step)

    def should_stop(self):
        return self.stop_after is not None and self.step >= self.stop_after


def test_fit_stops_after_the_step_with_one_checkpoint():
    t = _FakeTrainer(max_steps=10, save_every=4, stop_after=6)
    GRPOTrainer.fit(t, should_stop=t.should_stop)
    # periodic save at 4, then the signal seen after step 6: one save of step 6, no step 7
    assert t.stopped_early and t.step == 6 and t.saved == [4, 6] and t.logged == [1, 2, 3, 4, 5, 6]
    t = _FakeTrainer(max_steps=10, save_every=4, stop_after=4)
    GRPOTrainer.fit(t, should_stop=t.should_stop)
    assert t.saved == [4] and t.step == 4  # the step's own periodic save is not repeated
    t = _FakeTrainer(max_steps=3, save_every=100)
    GRPOTrainer.fit(t, should_stop=t.should_stop)
    assert not t.stopped_early and t.saved == [3] and t.step == 3


def test_fit_with_a_signal_before_the_first_step_saves_nothing():
    t = _FakeTrainer(max_steps=5, save_every=1, stop_after=2, step=2)  # resumed at 2, stopped during start-up
    GRPOTrainer.fit(t, should_stop=t.should_stop)
    assert t.stopped_early and t.saved == [] and t.logged == [] and t.step == 2


def test_wait_for_nodes_names_the_missing_ones():
    now = [0.0]
    joined = [set(), {"n0"}, {"n0", "n2"}]

    def alive():
        return joined[min(int(now[0]), 2)]

    def sleep(s):
        now[0] += s

    assert wait_for_nodes(["n0", "n2", "n0"], timeout_s=5, alive=alive, clock=lambda: now[0], sleep=sleep) == ["n0", "n2"]
    now[0] = 0.0
    with pytest.raises(NodesMissingError) as err:
        wait_for_nodes(["n0", "n1", "n2", "n3"], timeout_s=3, alive=alive, clock=lambda: now[0], sleep=sleep)
    assert err.value.missing == ["n1", "n3"]
    assert str(err.value) == "after 3 s, 2 of 4 node(s) joined the Ray cluster; missing: n1, n3"
