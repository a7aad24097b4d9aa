"""The CPU recipe's parts: magnitude pruning of a real teacher, pure output distillation from cached
teacher outputs (no discriminator when lambda_gan is 0), SSIM term, cosine schedule, smaller crops."""

from __future__ import annotations

import torch

from compression_jobs.coevolution.prune import channel_scores, magnitude_prune
from compression_jobs.counting import count_macs
from compression_jobs.data import DataConfig, ImageSet
from compression_jobs.gan_compression.config import DistillConfig
from compression_jobs.gan_compression.distill import DistillParts, train_distill
from compression_jobs.gan_compression.evaluate import fidelity, outputs
from compression_jobs.models import patchgan_discriminator, resnet_generator


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    net = resnet_generator(ngf=16, n_blocks=3, norm="instance-affine")
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.InstanceNorm2d):
                m.weight.uniform_(0.1, 2.0)
    return net.eval()


def test_magnitude_prune_fits_the_budget_and_keeps_the_strongest_channels():
    teacher = _teacher()
    full = count_macs(teacher, 256)
    for ratio in (3, 10):
        small = magnitude_prune(teacher, full / ratio)
        macs = count_macs(small, 256)
        assert macs <= full / ratio and macs > full / ratio / 2  # the widest fraction that fits, not any
    small = magnitude_prune(teacher, full / 3)
    scores = channel_scores(teacher)["stem"]
    kept = small.config.stem
    top = set(torch.topk(scores, kept).indices.tolist())
    # the compact stem's norm scales are exactly the teacher's largest ones
    assert sorted(small.model[2].weight.detach().tolist()) == sorted(scores[sorted(top)].tolist())


def test_output_distillation_from_cached_teacher_outputs_learns_without_a_discriminator():
    cfg = DataConfig(root="embedded:facades", direction="AtoB", targets=False, load_size=40, crop_size=32,
                     max_train=6, max_test=3)
    train, test = ImageSet(cfg, "train"), ImageSet(cfg, "test")
    assert not train.paired and train.target is None
    teacher = _teacher()
    student = magnitude_prune(teacher, count_macs(teacher, 256) / 4)
    torch.manual_seed(1)
    for p in student.parameters():  # start far from the teacher so learning is visible
        p.data.add_(torch.randn_like(p) * 0.2)
    d = patchgan_discriminator(input_nc=3, ndf=8, n_layers=2)
    d_before = {k: v.clone() for k, v in d.state_dict().items()}
    t_out = outputs(teacher, test, 4)
    before = fidelity(student.eval(), test, t_out, 4)["ssim_to_teacher"]
    dcfg = DistillConfig(lambda_gan=0.0, lambda_recon=1.0, lambda_ssim=1.0, lambda_gt=0.0, distill_layers=0,
                         lr_schedule="cosine", train_crop=24, cache_teacher=True)
    log = train_distill(teacher=teacher, parts=DistillParts(student, None, d, [], []), train=train, cfg=dcfg,
                        steps=30, lr=2e-3, batch_size=4, seed=0, conditional_d=False)
    after = fidelity(student.eval(), test, t_out, 4)["ssim_to_teacher"]
    assert after > before
    assert log["loss_ssim"] > 0 and log["loss_d"] == 0.0
    assert all(torch.equal(d_before[k], v) for k, v in d.state_dict().items())  # no discriminator update


def test_students_of_one_teacher_share_its_cached_outputs():
    """Several students distilled from the same teacher and images (prune-finetune's loop) pay for the
    teacher's outputs once: the caller's target_cache carries them from one student to the next."""
    cfg = DataConfig(root="embedded:facades", direction="AtoB", targets=False, load_size=40, crop_size=32,
                     max_train=4, max_test=2)
    train = ImageSet(cfg, "train")
    teacher = _teacher()
    students = [magnitude_prune(teacher, count_macs(teacher, 256) / r) for r in (4, 8, 8)]
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    dcfg = DistillConfig(lambda_gan=0.0, lambda_recon=1.0, lambda_ssim=0.0, lambda_gt=0.0, distill_layers=0,
                         train_crop=24, cache_teacher=True)

    def distill(student: torch.nn.Module, cache: dict | None) -> int:
        train_distill(teacher=teacher, parts=DistillParts(student, None, patchgan_discriminator(ndf=8, n_layers=2),
                                                          [], []),
                      train=train, cfg=dcfg, steps=2, lr=1e-3, batch_size=2, seed=0, conditional_d=False,
                      target_cache=cache)
        return len(calls)

    shared: dict = {}
    first, second = distill(students[0], shared), distill(students[1], shared)
    assert first > 0 and second == first and len(shared) == 1
    assert distill(students[2], None) > second  # without a shared cache every student runs the teacher again


def test_extra_students_get_their_own_step_counts_and_bad_lists_are_refused():
    import pytest
    from pydantic import ValidationError

    from compression_jobs.coevolution.config import CoevolutionConfig

    cfg = CoevolutionConfig(selection="magnitude", extra_budget_ratios=[0.05, 0.033], finetune_steps=100,
                            extra_finetune_steps=[300])
    assert [cfg.steps_for(i) for i in range(3)] == [100, 300, 100]  # missing entries: finetune_steps
    with pytest.raises(ValidationError, match="2 entries for 1 extra_budget_ratios"):
        CoevolutionConfig(extra_budget_ratios=[0.05], extra_finetune_steps=[1, 2])
    with pytest.raises(ValidationError, match=">= 0"):
        CoevolutionConfig(extra_budget_ratios=[0.05], extra_finetune_steps=[-1])
