"""LAP (Chen et al., Neural Networks 2022): a DDPG actor-critic agent chooses each group's sparsity, with
latency sensitivity from the LUT in its state and reward; AMC-style action limits keep every episode
within the budget.

* State of group t: position, width, share of MACs, **latency sensitivity** (the share of the network's
  latency the group can remove, from its measured stairs), latency still to remove, previous action.
* Action: the fraction of channels kept, snapped to the group's nearest stair edge at or above it,
  and capped so that the budget stays reachable if every later group went to its smallest candidate.
* Reward, at the end of an episode and shared by its steps (AMC): minus the proxy error (the share of
  importance removed), minus a penalty for predicted latency over the target. Where the search has training
  images (``trtprune search``/``run``), the best episodes within the target are then scored by accuracy - the
  adaptive-BN proxy, as LAP and AMC reward validation accuracy - and the most accurate is proposed.
* Episodes use the separable latency estimate (each group's stairs with the others at full width), which
  costs no measurement; the best plans are then re-checked with the joint LUT estimate, and when none is
  within the target by it, the best is brought under it by LOCP's stage 1 (``locp.walk_down``).
Seeded (numpy and torch), episodes configurable.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from trtprune.profiling.layers import macs
from trtprune.profiling.profile import group_layers
from trtprune.searching.base import Searcher
from trtprune.searching.locp import walk_down
from trtprune.searching.space import SearchSpace

log = logging.getLogger(__name__)

STATE = 6
PROXY_TOP = 6  # best episodes (by importance kept) that the accuracy proxy scores, where the search has one


def _mlp(n_in: int, n_out: int, hidden: int = 64, out: nn.Module | None = None) -> nn.Sequential:
    layers = [nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out)]
    return nn.Sequential(*layers, *([out] if out is not None else []))


@contextlib.contextmanager
def _one_thread():
    """The agent's networks are tiny: one thread runs an update in ~4 ms here, two threads with another job
    on the cores took 68 ms (thread hand-offs dominate). The caller's setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LAP(Searcher):
    name = "lap"

    def propose(self, space: SearchSpace, target_ms: float, start: Mapping[str, int]) -> dict[str, int]:
        with _one_thread():
            return self._propose(space, target_ms)

    def _propose(self, space: SearchSpace, target_ms: float) -> dict[str, int]:
        episodes = int(self.options.get("episodes", 300))
        warmup = int(self.options.get("warmup", 50))
        seed = int(self.options.get("seed", 0))
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        env = _Env(space, target_ms)
        actor, critic = _mlp(STATE, 1, out=nn.Sigmoid()), _mlp(STATE + 1, 1)
        actor_t, critic_t = _mlp(STATE, 1, out=nn.Sigmoid()), _mlp(STATE + 1, 1)
        actor_t.load_state_dict(actor.state_dict())
        critic_t.load_state_dict(critic.state_dict())
        opt_a = torch.optim.Adam(actor.parameters(), lr=1e-4)
        opt_c = torch.optim.Adam(critic.parameters(), lr=1e-3)
        buffer: list[tuple[np.ndarray, float, float, np.ndarray, bool]] = []
        sigma, baseline, found = 0.5, None, []
        for ep in range(episodes):
            explore = ep < warmup
            states, actions, plan = env.rollout(lambda s, sd=sigma, e=explore: self._act(actor, s, rng, sd, e))
            reward = env.reward(plan)
            found.append((reward, plan))
            baseline = reward if baseline is None else 0.95 * baseline + 0.05 * reward
            for t in range(len(actions)):  # the episode's reward for every step, less a moving baseline
                nxt = states[t + 1] if t + 1 < len(states) else states[t]
                buffer.append((states[t], actions[t], reward - baseline, nxt, t + 1 == len(actions)))
            buffer = buffer[-20000:]
            if ep >= warmup:
                sigma *= 0.99
                for _ in range(len(actions)):
                    self._update(rng, buffer, actor, critic, actor_t, critic_t, opt_a, opt_c)
        found.sort(key=lambda rp: -rp[0])
        best = [plan for _, plan in found[:20]]  # the best episodes, checked with the joint estimate
        joint = space.predict(best)
        within = [plan for plan, ms in zip(best, joint) if ms <= target_ms]
        if within and space.accuracy is not None:
            return self._by_accuracy(space, within[: int(self.options.get("proxy_top", PROXY_TOP))])
        if within:
            return within[0]
        # The agent's latency model is separable (each group's saving with the others at full width); pruning
        # both sides of a conv saves less than the two savings added, so with coupled layers (large batches)
        # every episode can be over the target by the joint estimate. The best one is then brought under it
        # by the cheapest further removals (LOCP's stage 1), as AMC's limits would have with the true model.
        log.info("lap: best episode predicted %.3f ms, over %.3f ms jointly: removing more", joint[0], target_ms)
        return walk_down(space, best[0], target_ms)

    def _by_accuracy(self, space: SearchSpace, plans: list[dict[str, int]]) -> dict[str, int]:
        """LAP's and AMC's reward is accuracy: of the agent's best episodes within the target (ranked by the
        importance they keep, which costs nothing per episode), the one the accuracy proxy scores highest."""
        unique = list({tuple(sorted(p.items())): p for p in plans}.values())
        scores = [space.accuracy(p) for p in unique]
        top = int(np.argmax(scores))
        log.info(
            "lap: %d best episodes scored by the accuracy proxy: %s; kept the %s",
            len(unique),
            ", ".join(f"{x:.2f}" for x in scores),
            "first" if top == 0 else f"#{top + 1}",
        )
        self.proxy_scores = scores
        return unique[top]

    @staticmethod
    def _act(actor, state, rng, sigma, random_phase) -> float:
        if random_phase:
            return float(rng.uniform(0, 1))
        with torch.no_grad():
            mu = float(actor(torch.as_tensor(state, dtype=torch.float32))[0])
        return float(np.clip(rng.normal(mu, sigma), 0.0, 1.0))

    @staticmethod
    def _update(rng, buffer, actor, critic, actor_t, critic_t, opt_a, opt_c, batch=64, gamma=1.0, tau=0.01):
        if len(buffer) < batch:
            return
        picks = [buffer[i] for i in rng.integers(0, len(buffer), batch)]
        s = torch.tensor(np.array([p[0] for p in picks]), dtype=torch.float32)
        a = torch.tensor([[p[1]] for p in picks], dtype=torch.float32)
        r = torch.tensor([[p[2]] for p in picks], dtype=torch.float32)
        s2 = torch.tensor(np.array([p[3] for p in picks]), dtype=torch.float32)
        done = torch.tensor([[float(p[4])] for p in picks])
        with torch.no_grad():
            q_next = critic_t(torch.cat([s2, actor_t(s2)], 1))
            y = r + gamma * (1 - done) * q_next
        loss_c = nn.functional.mse_loss(critic(torch.cat([s, a], 1)), y)
        opt_c.zero_grad()
        loss_c.backward()
        opt_c.step()
        loss_a = -critic(torch.cat([s, actor(s)], 1)).mean()
        opt_a.zero_grad()
        loss_a.backward()
        opt_a.step()
        with torch.no_grad():
            for net, target in ((actor, actor_t), (critic, critic_t)):
                for p, pt in zip(net.parameters(), target.parameters()):
                    pt.mul_(1 - tau).add_(tau * p)


class _Env:
    """Groups in module order; latency is separable: full latency minus what each group's choice saves."""

    def __init__(self, space: SearchSpace, target_ms: float):
        self.space, self.target = space, target_ms
        self.groups = list(space.candidates)
        p = space.predictor
        by_name = {gl.group.name: gl for gl in group_layers(p.groups, p.layers)}
        self.full_ms = space.predict([space.full])[0]
        self.saving = {}  # group -> {count: latency saved vs full, others at full width}
        for g in self.groups:
            cands = space.candidates[g]
            curve = p.profiler.curve(by_name[g], cands)
            self.saving[g] = {k: curve[cands[-1]] - curve[k] for k in cands}
        total_macs = max(1.0, float(sum(m for m in self._macs(space.full).values())))
        self.macs_share = {g: m / total_macs for g, m in self._macs(space.full).items()}
        self.sensitivity = {g: max(self.saving[g].values()) / self.full_ms for g in self.groups}
        self.max_cost = max(1e-12, sum(space.cost(g, space.candidates[g][0]) for g in self.groups))

    def _macs(self, keep) -> dict[str, float]:

        p = self.space.predictor
        out = {g: 0.0 for g in self.groups}
        for (sig, cin, cout), layer in zip(p.points(keep), p.layers.values()):
            owner = next((g.name for g in p.groups if layer.name in g.producers), None)
            if owner in out:
                out[owner] += macs(sig, cin, cout)
        return out

    def predicted(self, keep) -> float:
        return self.full_ms - sum(self.saving[g][k] for g, k in keep.items())

    def rollout(self, policy):
        keep = dict(self.space.full)
        states, actions, prev = [], [], 1.0
        for t, g in enumerate(self.groups):
            left = max(0.0, self.predicted(keep) - self.target) / self.full_ms
            state = np.array(
                [
                    t / len(self.groups),
                    self.space.candidates[g][-1] / 512,
                    self.macs_share[g],
                    self.sensitivity[g],
                    left,
                    prev,
                ],
                dtype=np.float32,
            )
            a = policy(state)
            cands = self.space.candidates[g]
            # AMC's limit: the most this group may keep so that later groups at their minimum still meet the target
            later_max = sum(max(self.saving[h].values()) for h in self.groups[t + 1 :])
            allowed = [k for k in cands if self.predicted({**keep, g: k}) - later_max <= self.target] or [cands[0]]
            want = a * cands[-1]
            k = min([c for c in allowed if c >= want] or [max(allowed)])
            keep[g] = k
            states.append(state)
            actions.append(k / cands[-1])
            prev = k / cands[-1]
        return states, actions, keep

    def reward(self, keep) -> float:
        error = self.space.total_cost(keep) / self.max_cost  # proxy: share of the removable importance removed
        over = max(0.0, self.predicted(keep) / self.target - 1.0)
        return -error - 10.0 * over
