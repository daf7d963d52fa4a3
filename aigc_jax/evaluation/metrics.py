"""FID, Inception Score and KID from feature or logit arrays, in float64 numpy on the host.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to two feature
sets; IS (Salimans et al. 2016) the exponentiated mean KL divergence of p(y|x) from p(y);
KID (Bińkowski et al. 2018) the unbiased MMD² under the cubic polynomial kernel. Each is
computed as the reference implementations compute it (pytorch-fid, the original IS code,
TF-GAN / clean-fid), so numbers are comparable with published ones.
"""

import numpy as np
import scipy.special

from aigc_jax.errors import UserError


def feature_stats(features_ND: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and covariance [D, D] (unbiased, as pytorch-fid) of N feature vectors."""
  f = np.asarray(features_ND, np.float64)
  if f.ndim != 2 or len(f) < 2:
    raise UserError(f'feature statistics need at least 2 feature vectors [N, D], got shape {f.shape}')
  return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(s_DD: np.ndarray) -> np.ndarray:
  """The symmetric square root of a symmetric PSD matrix; round-off negative eigenvalues count as 0."""
  w, v = np.linalg.eigh(s_DD)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½).

  Tr (S1 S2)^½ is the sum of the square roots of the eigenvalues of S1 S2, which are those of
  the symmetric PSD matrix S1^½ S2 S1^½; two symmetric eigendecompositions give it without
  scipy.linalg.sqrtm's failure modes (singular products when N < D, complex round-off).
  Eigenvalues below zero by round-off count as zero, as taking the real part of sqrtm's
  trace does in pytorch-fid, so the two agree wherever sqrtm converges.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  d = mu1.shape[0]
  if mu1.shape != mu2.shape or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise UserError(f'Fréchet distance needs means [D] and covariances [D, D] of one D, got '
                    f'{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}')
  root1 = _sqrt_psd(sigma1)
  inner = root1 @ sigma2 @ root1
  eig = np.linalg.eigvalsh((inner + inner.T) / 2)
  tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def inception_score(logits_NK: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """Mean and standard deviation over `splits` parts of exp(E_x KL(p(y|x) || p(y))).

  As the original code: p(y) is the mean of p(y|x) within each part, and the parts are
  consecutive slices [i N / splits, (i + 1) N / splits). Computed in log space from logits.
  """
  logits = np.asarray(logits_NK, np.float64)
  if logits.ndim != 2 or not 1 <= splits <= len(logits):
    raise UserError(f'Inception Score needs logits [N, K] with N >= splits={splits}, got {logits.shape}')
  logp = scipy.special.log_softmax(logits, axis=1)
  n = len(logp)
  scores = []
  for i in range(splits):
    part = logp[i * n // splits:(i + 1) * n // splits]
    log_py = scipy.special.logsumexp(part, axis=0) - np.log(len(part))
    kl = np.sum(np.exp(part) * (part - log_py), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def _polynomial_kernel(x_MD: np.ndarray, y_MD: np.ndarray) -> np.ndarray:
  return (x_MD @ y_MD.T / x_MD.shape[1] + 1.0) ** 3


def kernel_inception_distance(features1_ND: np.ndarray, features2_ND: np.ndarray,
                              num_subsets: int = 100, subset_size: int = 1000,
                              rng: np.random.Generator | None = None) -> tuple[float, float]:
  """Mean and standard deviation over subsets of the unbiased MMD² with k(x, y) = (x·y / d + 1)³.

  Each of `num_subsets` draws m = min(subset_size, N1, N2) vectors from each set without
  replacement; its MMD² averages k over the off-diagonal pairs within each set and over all
  pairs across them (Bińkowski et al.; TF-GAN and clean-fid compute the same).
  """
  f1 = np.asarray(features1_ND, np.float64)
  f2 = np.asarray(features2_ND, np.float64)
  if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
    raise UserError(f'KID needs two feature sets [N, D] of one D, got {f1.shape} and {f2.shape}')
  m = min(subset_size, len(f1), len(f2))
  if m < 2 or num_subsets < 1:
    raise UserError(f'KID needs subsets of at least 2 vectors and num_subsets >= 1, got m={m}, '
                    f'num_subsets={num_subsets}')
  rng = rng if rng is not None else np.random.default_rng(0)
  mmds = []
  for _ in range(num_subsets):
    x = f1[rng.choice(len(f1), m, replace=False)]
    y = f2[rng.choice(len(f2), m, replace=False)]
    k_xx, k_yy = _polynomial_kernel(x, x), _polynomial_kernel(y, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    mmds.append(within - 2.0 * _polynomial_kernel(x, y).mean())
  return float(np.mean(mmds)), float(np.std(mmds))
