"""Exact denoisers of Gaussian data, for testing solvers, losses and models without training.

For data x0 ~ N(mu, Sigma) and noisy x = x0 + sigma * eps, the ideal denoiser is the posterior
mean E[x0 | x] = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu); with some entries observed
(clean), the same holds for the latent entries under the conditional N(mu_c, Sigma_c).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def diagonal_denoiser(mean: torch.Tensor, std: torch.Tensor):
    """D(x, sigma) for independent N(mean_i, std_i^2) columns."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        v = std**2
        return (v * x + sigma**2 * mean) / (v + sigma**2)

    return denoise


def diagonal_flow(x: torch.Tensor, mean, std, sigma_from: float, sigma_to: float):
    """The exact probability-flow ODE map between two noise levels (affine per column)."""
    ratio = torch.sqrt((std**2 + sigma_to**2) / (std**2 + sigma_from**2))
    return mean + (x - mean) * ratio


def diagonal_logpdf(x: torch.Tensor, mean, std, sigma: float = 0.0) -> torch.Tensor:
    var = std**2 + sigma**2
    return (-0.5 * ((x - mean) ** 2 / var + torch.log(2 * math.pi * var))).sum(-1)


def conditional_gaussian(mu: np.ndarray, cov: np.ndarray, observed: np.ndarray,
                         values: np.ndarray):
    """Mean and covariance of the latent entries given observed ``values``."""
    lat, obs = np.flatnonzero(~observed), np.flatnonzero(observed)
    if len(obs) == 0:
        return mu[lat], cov[np.ix_(lat, lat)]
    k = cov[np.ix_(lat, obs)] @ np.linalg.inv(cov[np.ix_(obs, obs)])
    mean = mu[lat] + k @ (values - mu[obs])
    return mean, cov[np.ix_(lat, lat)] - k @ cov[np.ix_(obs, lat)]


class OracleNetwork(torch.nn.Module):
    """A "network" that outputs the exact F for standardised Gaussian data N(mu, cov).

    It undoes the dynamics' preconditioning: sigma from c_noise, x from c_in x, then
    F = (D - c_skip x) / c_out with the exact conditional denoiser D. Float64 inside.
    """

    def __init__(self, dynamics, mu: np.ndarray, cov: np.ndarray):
        super().__init__()
        self.dynamics = dynamics
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float64))
        self.register_buffer("cov", torch.as_tensor(cov, dtype=torch.float64))
        self.calls = 0

    def sigma_of(self, c_noise: torch.Tensor) -> torch.Tensor:
        if self.dynamics.name == "score":
            return torch.exp(4 * c_noise)
        t = (c_noise + 2) / 4
        return t / (1 - t)

    def forward(self, x_in, c_noise, observed, edges=None):
        """observed: bool (True = observed) or uint8 states (0 latent, 1 observed, 2 missing:
        left out, so the latent entries get the exact marginal conditional)."""
        self.calls += 1
        B, T = x_in.shape
        x_in, c_noise = x_in.double(), c_noise.double()
        sigma = self.sigma_of(c_noise)
        c_skip, c_out, c_in, _ = self.dynamics.preconditioning(sigma)
        states = observed.to(torch.uint8).expand(B, T)
        latent_mask = states == 0
        x = torch.where(latent_mask, x_in / c_in[:, None], x_in)
        out = torch.zeros(B, T, dtype=torch.float64, device=x_in.device)
        # one code per row's pattern of states (base 3): a 1-D unique is far cheaper
        code = (states.long() * 3 ** torch.arange(T, device=x_in.device)).sum(1)
        for c in torch.unique(code):
            rows = code == c
            pattern = states[rows.nonzero()[0, 0]]
            lat, obs = (pattern == 0).nonzero().flatten(), (pattern == 1).nonzero().flatten()
            mu_c, cov_c = self._conditional(lat, obs, x[rows][:, obs])
            s2 = sigma[rows] ** 2
            eye = torch.eye(len(lat), dtype=torch.float64, device=x.device)
            # D = mu_c + cov_c (cov_c + s2 I)^-1 (x_lat - mu_c), one inverse per noise level
            levels, level = torch.unique(s2, return_inverse=True)
            gain = (cov_c @ torch.linalg.inv(cov_c + levels[:, None, None] * eye))[level]
            d = mu_c + (gain @ (x[rows][:, lat] - mu_c)[..., None])[..., 0]
            f = (d - c_skip[rows, None] * x[rows][:, lat]) / c_out[rows, None]
            block = out[rows]
            block[:, lat] = f
            out[rows] = block
        return out.to(x_in.dtype if x_in.dtype != torch.float64 else torch.float32)

    def _conditional(self, lat, obs, values):
        mu, cov = self.mu, self.cov
        if len(obs) == 0:
            return mu[lat].expand(values.shape[0], -1), cov[lat][:, lat]
        k = cov[lat][:, obs] @ torch.linalg.inv(cov[obs][:, obs])
        mean = mu[lat] + (values - mu[obs]) @ k.T
        return mean, cov[lat][:, lat] - k @ cov[obs][:, lat]
