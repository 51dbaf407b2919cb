"""Score-based dynamics: denoising score matching with EDM preconditioning.

Following Karras et al. ("Elucidating the design space of diffusion-based generative models",
NeurIPS 2022), noisy latents are ``x = x0 + sigma * eps`` and the network is wrapped as a
denoiser

    D(x; sigma) = c_skip x + c_out F(c_in x, log(sigma) / 4),
    c_skip = 1 / (sigma^2 + 1),  c_out = sigma / sqrt(sigma^2 + 1),  c_in = 1 / sqrt(sigma^2 + 1)

(data standardised to unit variance), trained with ``|| D - x0 ||^2 / c_out^2``: noise prediction
at small sigma, data prediction at large sigma, unit-scale targets everywhere. The score is
``(D - x) / sigma^2`` and the probability-flow ODE is ``dx/dsigma = (x - D) / sigma``.

Two forward SDEs share this form (Song et al., ICLR 2021): the variance-exploding SDE, where
sigma is the time, and the variance-preserving SDE, which is the same process after rescaling
``x / alpha(t)`` with ``sigma(t)^2 = exp(beta_min t + beta_d t^2 / 2) - 1``. They differ in the
noise levels seen in training and the time grid used in sampling. Observed entries stay clean
(noise level 0), enter the network unscaled and carry no loss.
"""

from __future__ import annotations

import torch

from skformer.dynamics.base import VEForm

__all__ = ["ScoreDynamics"]


class ScoreDynamics(VEForm):
    """Denoising score matching for the VE or VP SDE.

    Parameters
    ----------
    sde : {"ve", "vp"}
        Variance-exploding (noise levels log-normal in training, log-uniform grid in sampling) or
        variance-preserving (uniform time in training and sampling).
    sigma_min, sigma_max : float
        Noise range of the VE grid (standardised units).
    p_mean, p_std : float
        Training noise levels (VE): log(sigma) ~ N(p_mean, p_std^2).
    """

    name = "score"

    def __init__(self, sde: str = "ve", sigma_min: float = 1e-3, sigma_max: float = 40.0,
                 p_mean: float = -1.2, p_std: float = 1.4):
        if sde not in ("ve", "vp"):
            raise ValueError(f"sde must be 've' or 'vp'; got {sde!r}.")
        super().__init__(sigma_min, sigma_max)
        self.sde = sde
        self.p_mean, self.p_std = p_mean, p_std
        self.beta_min, self.beta_d, self.t_eps = 0.1, 19.9, 1e-3

    # ------------------------------------------------------------------ noise levels
    def _vp_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.expm1(self.beta_min * t + 0.5 * self.beta_d * t**2))

    @property
    def sigma_start(self) -> float:
        if self.sde == "ve":
            return self.sigma_max
        return float(self._vp_sigma(torch.tensor(1.0)))

    def train_times(self, n: int, gen: torch.Generator, device) -> torch.Tensor:
        if self.sde == "ve":
            z = torch.randn(n, generator=gen, device=device)
            return torch.exp(self.p_mean + self.p_std * z)
        u = torch.rand(n, generator=gen, device=device)
        return self._vp_sigma(self.t_eps + (1 - self.t_eps) * u)

    def time_grid(self, steps: int, device) -> torch.Tensor:
        """VE: uniform in log(sigma) (see VEForm). VP: uniform in its time, then 0."""
        if self.sde == "ve":
            return super().time_grid(steps, device)
        t = 1 - torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1) * (1 - self.t_eps)
        sig = self._vp_sigma(t)
        return torch.cat([sig, sig.new_zeros(1)]).to(device=device, dtype=torch.float32)

    # ------------------------------------------------------------------ the denoiser
    def denoise(self, net, x, sigma, observed, edges):
        """D(x; sigma) on latent entries; observed entries pass through unchanged.

        x : (batch, tokens); sigma : (batch,) positive; observed : (batch, tokens) bool.
        """
        s = sigma[:, None]
        c_in = torch.rsqrt(s**2 + 1)
        x_in = torch.where(observed, x, x * c_in)
        out = net(x_in, torch.log(sigma) / 4, observed, edges)
        d = x / (s**2 + 1) + out * (s * c_in)
        return torch.where(observed, x, d)

    def loss(self, net, x0, observed, edges, gen):
        """Per-sample mean squared error of the preconditioned output over latent entries."""
        B = x0.shape[0]
        sigma = self.train_times(B, gen, x0.device)
        eps = torch.randn(x0.shape, generator=gen, device=x0.device)
        return self.loss_at(net, x0, observed, edges, sigma, eps)

    def loss_at(self, net, x0, observed, edges, sigma, eps):
        """The loss for given noise levels and noise (used for a fixed validation set)."""
        s = sigma[:, None]
        x = torch.where(observed, x0, x0 + s * eps)
        d = self.denoise(net, x, sigma, observed, edges)
        weight = (s**2 + 1) / s**2  # 1 / c_out^2
        err = weight * (d - x0) ** 2
        latent = (~observed).float()
        return (err * latent).sum(1) / latent.sum(1).clamp(min=1)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "sde": self.sde, "p_mean": self.p_mean, "p_std": self.p_std}
