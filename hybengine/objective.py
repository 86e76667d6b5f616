"""The hybrid objective: EDM denoising (Karras et al. 2022) plus mask prediction (Sauvalle & Salzmann 2024).

    ln sigma ~ N(P_mean, P_std^2);   n ~ N(0, I);   x_n = x + sigma * n
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)      c_out = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)             c_noise = ln(sigma) / 4
    lambda = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2
    F = net(c_in * x_n, c_noise);   D_x = c_skip * x_n + c_out * F[:, :I];   logits = F[:, I:]
    denoise_b = lambda_b * mean (D_x - x)^2;   mask_b = w_mask * (CE(logits, y) + dice_weight * softDice)

Modes (one switch, same network): `hybrid` trains both terms at random sigma; `supervised` trains the
mask term on clean input at the fixed `sigma_clean`; `supervised-noisy` trains the mask term alone at
hybrid's sigmas (the control for noise augmentation); `denoise` trains the image term only.
In `hybrid` and `supervised-noisy` the first round(clean_share * B) samples of each batch are drawn at
`sigma_clean`, where fine-tuning and prediction use the net, the rest at ln sigma ~ N(P_mean, P_std^2):
without it P(sigma < 0.01) is about 0.2 % and the mask head is hardly trained where it is used.
No denoising term at sigma <= sigma_clean (unless `denoise_at_clean`): there lambda * c_out^2 = 1 for
every sigma and the target (x - c_skip x_n) / c_out is essentially -n, noise that is 0.2 % of the input,
so such a sample adds a loss of about 1 that nothing learns (tests/test_objective.py measures it).
Unlabeled samples (hybengine/data/unlabeled.py) carry a mask that is ignore_index throughout
(`has_mask` false): their mask term is zero, so they train the denoising term only. With a `teacher`
(a frozen start, `finetune.distill`) an unlabeled sample's mask term keeps the teacher's prediction instead:

    mask_b = distill * mean_pixels sum_k p_k (ln p_k - ln q_k),   p = softmax(teacher logits), q = softmax(logits)

(KL(teacher || net), both nets at the sample's own preconditioned input; Learning without Forgetting).
The objective knows no layers: it takes any net with the signature above.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import ObjectiveConfig
from .ops import REFERENCE, Ops


def edm_precond(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise, lam), each shaped like sigma (B,)."""
    s2, d2 = sigma.square(), sigma_data**2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1 / (s2 + d2).sqrt()
    c_noise = sigma.log() / 4
    lam = (s2 + d2) / (sigma * sigma_data).square()
    return c_skip, c_out, c_in, c_noise, lam


def soft_dice_loss(logits: torch.Tensor, y: torch.Tensor, ignore_index: int, eps: float = 1.0) -> torch.Tensor:
    """Per-sample 1 - mean_k Dice(softmax(logits)_k, onehot(y)_k) over valid pixels; (B,)."""
    K = logits.shape[1]
    valid = (y != ignore_index).unsqueeze(1)
    p = logits.float().softmax(dim=1) * valid
    onehot = F.one_hot(y.clamp(0, K - 1), K).permute(0, 3, 1, 2) * valid
    inter = (p * onehot).sum(dim=(2, 3))
    denom = p.sum(dim=(2, 3)) + onehot.sum(dim=(2, 3))
    return 1 - ((2 * inter + eps) / (denom + eps)).mean(dim=1)


class HybridObjective:
    """Per-sample loss terms of one batch; the training loop reduces them."""

    def __init__(self, cfg: ObjectiveConfig, ignore_index: int, ops: Ops = REFERENCE, teacher=None,
                 distill: float = 0.0):
        self.cfg, self.ignore_index, self.ops = cfg, ignore_index, ops  # ops.hybrid_loss: the joint loss
        self.teacher, self.distill = teacher, distill  # a frozen start whose predictions unlabeled samples keep

    def sample_sigma(self, batch: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
        """Noise levels (B,) of one batch (see the module docstring); `generator` is not drawn from in
        `supervised` mode, which uses sigma_clean throughout."""
        cfg = self.cfg
        if cfg.mode == "supervised":
            return torch.full((batch,), cfg.sigma_clean, device=device)
        ln_sigma = torch.randn(batch, device=device, generator=generator) * cfg.P_std + cfg.P_mean
        sigma = ln_sigma.exp()
        if cfg.mode in ("hybrid", "supervised-noisy"):
            sigma[:round(cfg.clean_share * batch)] = cfg.sigma_clean
        return sigma

    def __call__(
        self, net, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, I, H, W) clean images, y: (B, H, W) labels. Returns (denoise, mask), each (B,) fp32."""
        sigma = self.sample_sigma(x.shape[0], x.device, generator)
        n = torch.randn(x.shape, device=x.device, generator=generator, dtype=x.dtype)
        return self.terms(net, x, y, sigma, n)

    def terms(self, net, x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, n: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-sample (denoise, mask) terms at given noise levels sigma (B,) and noise n (like x)."""
        cfg = self.cfg
        added = sigma if cfg.clean_input_noise else torch.where(sigma <= cfg.sigma_clean, 0 * sigma, sigma)
        x_n = x + per_sample(added, x) * n
        out, c_skip, c_out, lam = precond_forward(net, x_n, sigma, cfg.sigma_data)
        lam = lam if cfg.mode in ("hybrid", "denoise") else torch.zeros_like(lam)
        if not cfg.denoise_at_clean:
            lam = torch.where(sigma <= cfg.sigma_clean, torch.zeros_like(lam), lam)
        w_mask = cfg.w_mask if cfg.mode != "denoise" else 0.0
        denoise, mask = self.ops.hybrid_loss(out, x_n, x, y, c_skip, c_out, lam, w_mask, self.ignore_index)
        if cfg.dice_weight > 0 and w_mask > 0:
            mask = mask + w_mask * cfg.dice_weight * soft_dice_loss(out[:, x.shape[1]:], y, self.ignore_index)
        kept = (self.distill * keep_teacher(self.teacher, out[:, x.shape[1]:], x_n, sigma, cfg.sigma_data)
                if self.teacher is not None else torch.zeros_like(mask))
        mask = torch.where(has_mask(y, self.ignore_index), mask, kept)
        return denoise, mask


def keep_teacher(teacher, logits: torch.Tensor, x_n: torch.Tensor, sigma: torch.Tensor, sigma_data: float
                 ) -> torch.Tensor:
    """Per-sample KL(teacher || net) of the class probabilities, mean over pixels (B,) fp32; the teacher
    sees the same preconditioned input and gets no gradient."""
    with torch.no_grad():
        target = precond_forward(teacher, x_n, sigma, sigma_data)[0][:, x_n.shape[-3]:].float().log_softmax(1)
    log_q = logits.float().log_softmax(1)
    return (target.exp() * (target - log_q)).sum(1).mean((-2, -1))


def has_mask(y: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Per-sample flag (..., B) of masks (..., B, H, W): false for unlabeled samples (all ignore_index)."""
    return (y != ignore_index).flatten(-2).any(-1)


def per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """v (B,) shaped to broadcast over x (..., B, C, H, W)."""
    return v.view(*([1] * (x.dim() - 4)), -1, 1, 1, 1)


def precond_forward(net, x_n: torch.Tensor, sigma: torch.Tensor, sigma_data: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM's preconditioned network, the one place it is applied: F = net(c_in * x_n, c_noise).

    Returns (F, c_skip, c_out, lam): the raw output F (B, I+K, H, W), which the fused loss reads
    with c_skip and c_out, and the denoising weight lam. D(x_n; sigma) = c_skip x_n + c_out F[:, :I]
    (`denoise`); F[:, I:] are the mask logits. x_n may carry leading axes (vmapped runs)."""
    c_skip, c_out, c_in, c_noise, lam = edm_precond(sigma, sigma_data)
    return net(per_sample(c_in, x_n) * x_n, c_noise), c_skip, c_out, lam


def denoise(net, x_n: torch.Tensor, sigma: float, sigma_data: float) -> torch.Tensor:
    """D(x_n; sigma) for a batch x_n (B, I, H, W) at one noise level."""
    s = torch.full((x_n.shape[0],), sigma, device=x_n.device, dtype=torch.float32)
    out, c_skip, c_out, _ = precond_forward(net, x_n, s, sigma_data)
    return per_sample(c_skip, x_n) * x_n + per_sample(c_out, x_n) * out[:, :x_n.shape[1]].float()


def predict_logits(net, x: torch.Tensor, sigma_clean: float, sigma_data: float) -> torch.Tensor:
    """Mask logits (B, K, H, W) for clean images, conditioned on the fixed small noise level."""
    sigma = torch.full((x.shape[0],), sigma_clean, device=x.device)
    return precond_forward(net, x, sigma, sigma_data)[0][:, x.shape[1]:]
