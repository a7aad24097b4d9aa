"""OMGD: the student learns only from the online teachers — never from the discriminators or the ground truth.

Each check runs the real training step (`OnlineDistiller.step`) and is also run against a
deliberately wrong distiller that gives the student a GAN loss and an L1 to the ground truth,
to show the check catches exactly that.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compression_jobs.gan_compression.config import load_config
from compression_jobs.omgd.distill import OnlineDistiller, TeacherOutputs, channel_distill, gram
from compression_jobs.omgd.stages import choose_student, new_student, teachers, uniform_configs
from compression_jobs.pipeline import new_discriminator

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_torch_thread")]


class CheatingDistiller(OnlineDistiller):
    """What OMGD must NOT do: discriminator feedback and ground truth for the student."""

    def teacher_step(self, x, gt):
        self._gt = gt
        return super().teacher_step(x, gt)

    def student_loss(self, x, teach: TeacherOutputs):
        loss, parts = super().student_loss(x, teach)
        s = self.student(x)
        cheat = self.gan(self.discriminators[0](self._d_in(x, s)), True, for_discriminator=False) + F.l1_loss(s, self._gt)
        return loss + cheat, parts


def _make(cls=OnlineDistiller, seed: int = 0) -> OnlineDistiller:
    torch.manual_seed(seed)
    job = load_config("tiny")
    wide, deep = teachers(job)
    sample = torch.rand(1, 3, 32, 32) * 2 - 1
    return cls(job.omgd, wide=wide, deep=deep, discriminators=[new_discriminator(job, True), new_discriminator(job, True)],
               student=new_student(job, uniform_configs(job)[0]), sample=sample)


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1


def _params(m: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _two_steps(cls, change: str) -> tuple[bool, bool]:
    """From one state, one step each with (a) the original and (b) a changed ground truth or discriminator.
    Returns (student parameters identical, teacher parameters identical)."""
    base = _make(cls)
    a, b = base.snapshot(), base.snapshot()
    x, gt = _batch(1)
    gt_b = gt
    if change == "ground-truth":
        gt_b = _batch(2)[1]
    else:
        with torch.no_grad():
            for d in b.discriminators:
                for p in d.parameters():
                    p.add_(torch.randn_like(p) * 0.5)
    a.step(x, gt)
    b.step(x, gt_b)
    return (_same(_params(a.student), _params(b.student)),
            _same(_params(a.teachers[0]) + _params(a.teachers[1]), _params(b.teachers[0]) + _params(b.teachers[1])))


@pytest.mark.parametrize("change", ["ground-truth", "discriminator"])
def test_student_update_does_not_depend_on_ground_truth_or_discriminator(change):
    student_same, teachers_same = _two_steps(OnlineDistiller, change)
    assert student_same, f"the OMGD student's update changed with the {change}"
    assert not teachers_same, f"the teachers must learn from the {change} (sanity: the change had an effect)"
    # the same check catches a student that gets a GAN loss and a ground-truth L1
    cheat_same, _ = _two_steps(CheatingDistiller, change)
    assert not cheat_same


def _reaches(t: torch.Tensor, params: set[int]) -> bool:
    """Whether `t`'s autograd graph has any of these parameters as a leaf."""
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if var is not None and id(var) in params:
            return True
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return False


@pytest.mark.parametrize("cls,expect_clean", [(OnlineDistiller, True), (CheatingDistiller, False)])
def test_no_discriminator_input_depends_on_the_student(cls, expect_clean):
    d = _make(cls)
    student_params = {id(p) for p in d.student.parameters()}
    calls: list[bool] = []
    hooks = [disc.register_forward_pre_hook(lambda _m, args: calls.append(_reaches(args[0], student_params)))
             for disc in d.discriminators]
    try:
        x, gt = _batch(3)
        d.step(x, gt)
    finally:
        for h in hooks:
            h.remove()
    assert calls, "the discriminators ran (they train the teachers)"
    assert (not any(calls)) is expect_clean


def test_student_loss_gradient_reaches_only_student_and_mappers():
    d = _make()
    x, gt = _batch(4)
    gt.requires_grad_(True)
    teach, _ = d.teacher_step(x, gt)
    loss, parts = d.student_loss(x, teach)
    others = [p for m in (*d.teachers, *d.discriminators) for p in m.parameters()] + [gt]
    assert all(g is None for g in torch.autograd.grad(loss, others, allow_unused=True, retain_graph=True))
    mine = list(d.student.parameters()) + list(d.mapper.parameters())
    grads = torch.autograd.grad(loss, mine, allow_unused=True)
    assert all(g is not None for g in grads)
    assert all(v >= 0 for v in parts.values()) and parts["student_cd"] > 0 and parts["student_feature"] > 0


def test_channel_distill_and_gram():
    t = torch.randn(2, 4, 5, 5)
    assert channel_distill(t.clone(), t, 4.0).abs().item() < 1e-5
    assert channel_distill(torch.randn(2, 4, 5, 5), t, 4.0).item() > 0
    g = gram(t)
    assert g.shape == (2, 4, 4) and torch.allclose(g, g.transpose(1, 2))


def test_student_width_is_the_widest_uniform_config_within_budget():
    job = load_config("tiny")
    from compression_jobs.gan_compression.search import macs_at

    teacher_macs = 10**10
    cfg, budget = choose_student(job, teacher_macs)
    macs = {str(c): macs_at(new_student(job, c), 256) for c in uniform_configs(job)}
    assert macs[str(cfg)] <= budget
    assert all(m > budget for c, m in macs.items() if m > macs[str(cfg)])
    with pytest.raises(ValueError, match="fits the MACs budget"):
        choose_student(load_config("tiny", {"search.macs_budget_ratio": 1e-6}), teacher_macs)
    fixed = load_config("tiny", {"omgd.channel_config": "8_8_16_8_8_8_8_8"})
    assert str(choose_student(fixed, teacher_macs)[0]) == "8_8_16_8_8_8_8_8"
