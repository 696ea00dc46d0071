"""The smoothing certifier and resolvable transforms: resolving identities, Lemma 1 against explicit densities,
GL's numerical xi / g_hat against the closed forms, statistical soundness (a binomial test), bad input, seeds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

pytest.importorskip("scipy")
from scipy import stats  # noqa: E402

from gcert import smoothing as engine  # noqa: E402
from gcert.contracts import check_region  # noqa: E402
from gcert.errors import GcertError  # noqa: E402
from gcert.plugins import load_registry  # noqa: E402
from gcert.problem import Problem  # noqa: E402
from gcert.spec import Spec  # noqa: E402
from gcert.transforms import Distribution, TransformRegion  # noqa: E402
from gcert_plugins.pixel import PixelGenerator  # noqa: E402
from gcert_plugins.smoothing import Smoothing  # noqa: E402
from gcert_plugins.transforms import _transforms, reflect_extend, spatial  # noqa: E402

TRANSFORMS = {t.name: t for t in _transforms()}
SPATIAL = {"translation", "brightness-translation", "contrast-translation", "contrast-brightness-translation",
           "translation-blur-brightness-contrast"}


def _image(seed: int = 0, shape: tuple[int, ...] = (1, 9, 9)) -> torch.Tensor:
    return 0.1 + 0.8 * torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _params(t, gen: torch.Generator, integer_shifts: bool) -> torch.Tensor:
    """A parameter vector inside a tenth of the attack range (pixel ones at 9 px), shifts rounded if asked."""
    out = []
    for p in t.params:
        lo, hi = p.attack
        k = 9 / 224 * 20 if p.pixels else 1.0
        v = p.identity + (lo * k - p.identity + (hi * k - lo * k) * float(torch.rand(1, generator=gen))) * 0.3
        if p.pixels and p.unit == "px" and p.name.startswith("t") and integer_shifts:
            v = float(round(v))
        out.append(v)
    return torch.tensor([out], dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_resolving_identity(name: str) -> None:
    """phi(phi(x, beta), alpha) == phi(x, gamma(alpha, beta)); translations agree away from the border (on the
    reflected extension they act on, shifts compose exactly; the cropped image loses what crossed the edge)."""
    t, gen, x = TRANSFORMS[name], torch.Generator().manual_seed(1), _image()
    spatial_t = name in SPATIAL
    for _ in range(5):
        a, b = _params(t, gen, spatial_t), _params(t, gen, spatial_t)
        twice = t.phi(t.phi(x, b)[0], a)[0]
        once = t.phi(x, t.gamma(a, b))[0]
        if spatial_t:
            m = 1 + int(max(abs(float(v)) for v in (a[0, :2] if name.startswith("translation") else a[0, -2:])))
            m += int(max(abs(float(v)) for v in (b[0, :2] if name.startswith("translation") else b[0, -2:])))
            twice, once = twice[..., m:-m, m:-m], once[..., m:-m, m:-m]
            if "blur" in name:  # a blur spreads what crossed the edge: compare the shift and blur group law instead
                continue
        assert torch.allclose(twice, once, atol=1e-9), (name, a, b)
    # identity parameters change nothing
    assert torch.allclose(t.phi(x, t.identity.reshape(1, -1))[0], x, atol=1e-9)


def test_spatial_group_law_on_the_extension() -> None:
    """On the reflected extension, sub-pixel shifts add and blurs add in variance, exactly (to rounding)."""
    x = _image(2, (1, 7, 7))
    e = reflect_extend(x)  # a (2n-1)-periodic image: shift it as its own periodic signal

    def v(value: float) -> torch.Tensor:
        return torch.tensor([value], dtype=torch.float64)

    def per(img: torch.Tensor, tx: float, ty: float, r: float) -> torch.Tensor:
        spec = torch.fft.fft2(img)
        fy = torch.fft.fftfreq(img.shape[-2], dtype=torch.float64).reshape(-1, 1)
        fx = torch.fft.fftfreq(img.shape[-1], dtype=torch.float64).reshape(1, -1)
        m = torch.exp(-2j * math.pi * (fx * tx + fy * ty) - 2 * math.pi**2 * r**2 * (fx**2 + fy**2))
        return torch.fft.ifft2(spec * m).real

    assert torch.allclose(per(per(e, 0.3, -1.7, 0.4), 1.2, 0.5, 0.3), per(e, 1.5, -1.2, 0.5), atol=1e-10)
    # spatial() is that operation cropped back to the image, and a blur alone keeps the image's reflection symmetry
    assert torch.allclose(spatial(x, v(0.3), v(-1.7), v(0.4))[0], per(e, 0.3, -1.7, 0.4)[..., :7, :7],
                          atol=1e-10)
    blurred = spatial(x, None, None, v(0.3))[0]
    assert torch.allclose(reflect_extend(blurred), per(e, 0, 0, 0.3), atol=1e-10)
    assert torch.allclose(spatial(blurred, None, None, v(0.4))[0], spatial(x, None, None, v(0.5))[0],
                          atol=1e-10)


def _region(name: str, dists: tuple[Distribution, ...] | None = None, lo=None, hi=None) -> TransformRegion:
    t = TRANSFORMS[name]
    r = t.region(_image(0, (1, 8, 8)))
    return TransformRegion(t, r.image, r.lower if lo is None else torch.tensor(lo, dtype=torch.float64),
                           r.upper if hi is None else torch.tensor(hi, dtype=torch.float64), dists or r.smoothing)


def test_lemma1_gradient_against_explicit_densities() -> None:
    """eta from Lemma 1 (autograd) equals d/dbeta of the explicitly written log rho_beta(theta)."""
    gen = torch.Generator().manual_seed(0)
    # brightness, N(0, k): rho_beta(theta) = N(theta - beta; 0, k), eta = (theta - beta) / k^2 = alpha / k^2
    k = 0.3
    reg = _region("brightness", (Distribution("normal", k),))
    alpha = reg.sample_smoothing(50, gen)
    eta = engine.log_density_gradient(reg, alpha, torch.tensor([0.1], dtype=torch.float64))
    assert torch.allclose(eta, alpha / k**2, atol=1e-12)
    # contrast c * x, lognormal(0, s): rho_beta(theta) = LN(theta / beta) / beta
    s = 0.4
    reg = _region("contrast", (Distribution("lognormal", s),))
    alpha = reg.sample_smoothing(50, gen)
    beta = 1.3
    theta = alpha[:, 0] * beta

    def log_rho(b: float) -> torch.Tensor:
        return torch.tensor(stats.lognorm.logpdf((theta / b).numpy(), s) - math.log(b))

    fd = (log_rho(beta + 1e-6) - log_rho(beta - 1e-6)) / 2e-6
    eta = engine.log_density_gradient(reg, alpha, torch.tensor([beta], dtype=torch.float64))[:, 0]
    assert torch.allclose(eta, fd, rtol=1e-5, atol=1e-5)
    # blur radius, chi4 radius alpha and theta = sqrt(alpha^2 + beta^2): rho = chi4(sqrt(theta^2 - b^2)) theta / alpha
    sc = 0.5
    reg = _region("blur", (Distribution("chi4", sc),), lo=[0.0], hi=[1.0])
    alpha = reg.sample_smoothing(50, gen)
    beta = 0.4
    theta = torch.sqrt(alpha[:, 0] ** 2 + beta**2)

    def log_rho_blur(b: float) -> torch.Tensor:
        a = torch.sqrt(theta**2 - b**2)
        return torch.tensor(stats.chi.logpdf((a / sc).numpy(), 4)) - math.log(sc) + torch.log(theta / a)

    fd = (log_rho_blur(beta + 1e-6) - log_rho_blur(beta - 1e-6)) / 2e-6
    eta = engine.log_density_gradient(reg, alpha, torch.tensor([beta], dtype=torch.float64))[:, 0]
    assert torch.allclose(eta, fd, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["brightness", "brightness-translation"])
def test_numerical_xi_and_g_hat_match_the_closed_form(name: str) -> None:
    """On additive Gaussian smoothing GL's Algorithms 1-2 give xi(h) = phi(0) Phi^-1(h) and the Mahalanobis
    radius for g_hat (up to Monte Carlo error), the closed form of Cohen et al. and TSS."""
    reg = _region(name)
    bound = engine.gl_bound(reg, engine.BoundSettings(samples=20_000, path_points=5, grid=2))
    phi0 = 1 / math.sqrt(2 * math.pi)
    assert bound.g_max == pytest.approx(phi0 * engine.additive_gaussian_radius(reg), rel=0.03)
    for h in (0.6, 0.8, 0.95, 0.99):
        assert bound.xi_at(h) == pytest.approx(phi0 * stats.norm.ppf(h), rel=0.03, abs=2e-3)


class _Threshold(nn.Module):
    """Class 0 while the image's mean brightness is below ``0.5 + t0``: on a grey image under brightness b, class 0
    iff b < t0 (the saturation at 1 is monotone), so h_0(beta) = Phi((t0 - beta) / kappa) exactly."""

    def __init__(self, t0: float):
        super().__init__()
        self.t0 = t0

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        m = y.reshape(y.shape[0], -1).mean(dim=1) - 0.5
        return torch.stack([self.t0 - m, torch.zeros_like(m)], dim=1)


def _threshold_problem(t0: float, kappa: float, radius: float) -> Problem:
    t = TRANSFORMS["brightness"]
    x = torch.full((1, 2, 2), 0.5, dtype=torch.float32)
    box = torch.tensor([-radius, radius], dtype=torch.float64)
    region = TransformRegion(t, x, box[:1], box[1:], (Distribution("normal", kappa),))
    return Problem(_Threshold(t0), PixelGenerator(), region, Spec.top1(0, 2))


@pytest.mark.parametrize("method", ["closed-form", "numerical"])
def test_statistical_soundness_binomial(method: str) -> None:
    """1,000 certifications of a box where the claim is false (h_0 drops just below 1/2 at its edge): each
    'certified' is a failure, and failures must not exceed alpha (binomial test); with the threshold well inside,
    the same procedure certifies most of the time (the test can fail)."""
    kappa, radius, alpha = 0.05, 0.05, 0.05
    cert = Smoothing()
    false_claim = _threshold_problem(radius * 0.995, kappa, radius)
    reps = 1000 if method == "closed-form" else 150  # numerical: a fresh bound (its own Monte Carlo) per seed
    fails = 0
    for seed in range(reps):
        opts = cert.parse_options({"n": 200, "n0": 20, "alpha": alpha, "seed": seed, "method": method,
                                   "bound_samples": 3000, "path_points": 2, "grid": 2})
        fails += cert.certify(false_claim, opts).verdict == "certified"
    assert stats.binomtest(fails, reps, alpha, alternative="greater").pvalue > 1e-3, fails
    true_claim = _threshold_problem(radius + 2.5 * kappa, kappa, radius)
    wins = sum(cert.certify(true_claim, cert.parse_options({"n": 200, "n0": 20, "alpha": alpha, "seed": s,
                                                             "method": method, "bound_samples": 4000,
                                                             "path_points": 3, "grid": 2})).verdict == "certified"
               for s in range(20))
    assert wins >= 15


def test_same_seed_same_answer_and_record() -> None:
    cert = Smoothing()
    problem = _threshold_problem(0.2, 0.05, 0.05)
    one = cert.certify(problem, cert.parse_options({"seed": 7}))
    two = cert.certify(problem, cert.parse_options({"seed": 7}))
    other = cert.certify(problem, cert.parse_options({"seed": 8}))
    rec = one.details["smoothing"]
    assert one.verdict == "certified" and rec["h_lower"] == two.details["smoothing"]["h_lower"]
    assert rec["estimation_hits"] == two.details["smoothing"]["estimation_hits"]
    assert rec["n"] == 1000 and rec["alpha"] == 1e-3 and rec["seed"] == 7 and rec["confidence"] == 1 - 1e-3
    assert rec["certified_set"] == [{"name": "b", "unit": "intensity", "range": [-0.05, 0.05]}]
    assert rec["distribution"] == [{"family": "normal", "scale": 0.05, "loc": 0.0}]
    assert 0.5 < rec["h_lower"] < 1
    assert other.details["smoothing"]["seed"] == 8


def test_wrong_class_and_abstain_are_unknown() -> None:
    cert = Smoothing()
    wrong = cert.certify(_threshold_problem(-0.2, 0.05, 0.05), cert.parse_options({}))
    assert wrong.verdict == "unknown" and "predicts class 1" in wrong.details["reason"]
    near = cert.certify(_threshold_problem(0.001, 0.05, 0.05), cert.parse_options({"n": 100}))
    assert near.verdict == "unknown"


@pytest.mark.parametrize("values, text", [
    ({"n": 0}, "smoothing.n must be"), ({"n0": -1}, "smoothing.n0 must be"), ({"alpha": 0}, "in (0, 1)"),
    ({"alpha": 1.5}, "in (0, 1)"), ({"method": "exact"}, "is not one of"), ({"batch": "x"}, "must be a int"),
])
def test_bad_options_are_one_line_errors(values: dict, text: str) -> None:
    with pytest.raises(GcertError, match=text.replace("(", r"\(").replace(")", r"\)")):
        Smoothing().parse_options(values)


def test_parameters_outside_their_allowed_range_are_refused() -> None:
    t = TRANSFORMS["contrast"]
    with pytest.raises(GcertError, match="leaves its allowed range"):
        TransformRegion(t, _image(), torch.tensor([-0.5]), torch.tensor([2.0]), (Distribution("lognormal", 0.2),))
    with pytest.raises(GcertError, match="must be >= 0"):
        t.region(_image(), -1.0)
    with pytest.raises(GcertError, match="finite scale > 0"):
        Distribution("normal", 0.0)
    with pytest.raises(GcertError, match="range of c"):
        TransformRegion(t, _image(), torch.tensor([2.0]), torch.tensor([1.0]), (Distribution("lognormal", 0.2),))


def test_closed_form_refused_where_there_is_none() -> None:
    reg = _region("contrast")
    problem = Problem(_Threshold(0.2), PixelGenerator(), reg, Spec.top1(0, 2))
    with pytest.raises(GcertError, match="no closed form"):
        Smoothing().certify(problem, Smoothing().parse_options({"method": "closed-form"}))


def test_other_certifiers_refuse_a_transform_region_naming_smoothing() -> None:
    reg = load_registry()
    assert "contrast-brightness" in reg.transforms and reg.mutation("contrast-brightness").transform is not None
    region = _region("contrast-brightness")
    with pytest.raises(GcertError, match="certifiers that take it: smoothing"):
        check_region(reg.certifier("interval"), region, {n: e.value for n, e in reg.certifiers.items()})


def test_missing_scipy_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    monkeypatch.setitem(sys.modules, "scipy", None)
    with pytest.raises(GcertError, match=r"pip install 'gcert\[smoothing\]'"):
        Smoothing().prepare(_threshold_problem(0.2, 0.05, 0.05))


def test_transform_registration_is_checked() -> None:
    """The host's register callback rejects a wrong type and a duplicate name, naming both plugins."""
    import gcert
    from gcert.testing import make_registry

    class Plugin:
        @gcert.hookimpl
        def gcert_register_transforms(self, register):
            register("not a transform")
            register(TRANSFORMS["gamma"])

    reg = make_registry(Plugin())
    assert any("expected a ResolvableTransform" in p for p in reg.problems)
    assert any("transform 'gamma' registered by both 'transforms'" in p for p in reg.problems)
    assert reg.origin("transform", "gamma") == "transforms"


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_builtin_phi_takes_a_batch_of_images_one_parameter_row_each(name: str) -> None:
    t, gen = TRANSFORMS[name], torch.Generator().manual_seed(3)
    xs = torch.stack([_image(i) for i in range(3)])
    ps = torch.cat([_params(t, gen, False) for _ in range(3)])
    each = torch.stack([t.phi(xs[i], ps[i : i + 1])[0] for i in range(3)])
    assert torch.allclose(t.phi(xs, ps), each, atol=1e-12)


@pytest.mark.parametrize("name, certifier", [("brightness", "exactline"), ("contrast", "exactline"),
                                             ("contrast-brightness", "deeppoly"), ("contrast-brightness", "interval")])
def test_affine_transforms_go_to_deterministic_certifiers(name: str, certifier: str) -> None:
    """Brightness, contrast and their composition are affine in their parameters: the same box goes to the
    deterministic certifiers, its embedding is phi itself, and a 'certified' agrees with dense sampling."""
    from gcert import zoo

    net, _ = zoo.load_network("digits-cnn")
    reg = load_registry()
    import numpy as np

    data = np.load(zoo.samples_path("digits-cnn"))
    x, label = torch.from_numpy(data["images"][0]).float(), int(data["labels"][0])
    t = TRANSFORMS[name]
    region = t.region(x, 0.3)
    box = region.affine_box()
    pts = box.sample(64, torch.Generator().manual_seed(0))
    assert torch.allclose(box.embedding()(pts).double(), t.phi(x.double(), pts), atol=1e-6)
    problem = Problem(net, PixelGenerator(), box, Spec.top1(label, 10))
    c = reg.certifier(certifier)
    check_region(c, box)
    outcome = c.certify(problem, c.parse_options({}))
    if outcome.verdict == "certified":
        grid = box.sample(2000, torch.Generator().manual_seed(1))
        assert bool((problem.margins(grid) > 0).all())
    assert outcome.verdict in ("certified", "unknown", "falsified")
    with pytest.raises(GcertError, match="not affine"):
        TRANSFORMS["gamma"].region(x).affine_box()


def test_zero_config_run_through_the_runner(tmp_path) -> None:
    """`gcert run -c smoothing -m contrast-brightness` on the zoo default: records are probabilistic, carry the
    certified set and confidence, and the seed / N / alpha are part of the identity; other certifiers are refused
    before any work, in one line naming smoothing."""
    from gcert.plugins import PluginSettings
    from gcert.runner import Context, RunConfig

    cfg = RunConfig(mutations=("contrast-brightness",), certifiers=("smoothing",), limit=2,
                    options={"smoothing": {"n": 200, "seed": 3}}, plugins=PluginSettings(autoload=False))
    ctx = Context(cfg)
    assert ctx.model.source == "zoo:digits-smoothed"  # the default network's counterpart trained for smoothing
    ctx.prepare()
    task = ctx.tasks()[0]
    cert = ctx.certify(task)
    assert cert.error is None and cert.guarantee == "probabilistic" and cert.region["kind"] == "transform"
    assert cert.details["smoothing"]["confidence"] == pytest.approx(0.999)
    assert ctx.identity(task)["options"]["seed"] == 3 and ctx.identity(task)["options"]["n"] == 200
    other = Context(RunConfig(mutations=("contrast-brightness",), certifiers=("smoothing",), limit=2,
                              options={"smoothing": {"n": 200, "seed": 4}}, plugins=PluginSettings(autoload=False)))
    assert other.identity(other.tasks()[0])["hash"] != ctx.identity(task)["hash"]
    refused = Context(RunConfig(mutations=("contrast-brightness",), certifiers=("interval",), limit=1,
                                plugins=PluginSettings(autoload=False)))
    with pytest.raises(GcertError, match="not a 2-dimensional transform; certifiers that take it: smoothing"):
        refused.prepare()
    with pytest.raises(GcertError, match="smoothing.alpha must be in"):
        Context(RunConfig(mutations=("contrast-brightness",), certifiers=("smoothing",), limit=1,
                          options={"smoothing": {"alpha": "2"}}, plugins=PluginSettings(autoload=False)))


def test_consistency_loss_and_augmentation() -> None:
    """Jeong and Shin's loss: equal copies add only eta * entropy to the cross-entropy; copies that disagree pay
    the KL term. Augmented images stay in [0, 1] and keep their shape."""
    from gcert_zoo.smoothed import CONSISTENCY, augment, consistency_loss
    from torch.nn import functional as F

    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    p = F.softmax(logits, -1)
    entropy = float(-(p * p.log()).sum(-1).mean())
    same = consistency_loss(torch.cat([logits, logits]), y, 2)
    assert float(same) == pytest.approx(float(F.cross_entropy(logits, y)) + CONSISTENCY[1] * entropy, rel=1e-6)
    apart = consistency_loss(torch.cat([logits, -logits]), y, 2)
    ce = (float(F.cross_entropy(logits, y)) + float(F.cross_entropy(-logits, y))) / 2
    assert float(apart) > ce + 0.1 * CONSISTENCY[0]
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = augment(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1 and not torch.equal(out, x)


def test_the_bound_is_computed_once_per_box_not_per_image() -> None:
    """xi / g_hat depend on the transform, box and distributions only: a second image reuses them."""
    engine._BOUNDS.clear()
    settings = engine.BoundSettings(samples=500, path_points=2)
    t = TRANSFORMS["contrast-brightness"]
    first = engine.gl_bound(t.region(_image(0, (1, 8, 8))), settings)
    assert engine.gl_bound(t.region(_image(1, (1, 8, 8))), settings) is first and len(engine._BOUNDS) == 1


# --- pixel noise: GL's Laplace approximation (Eq. 5, 12-13) -----------------------------------------------------


@pytest.mark.parametrize("shape, sigma", [((1, 1, 1), 0.3), ((1, 4, 4), 0.5)])
def test_laplace_xi_matches_eq6_on_brightness(shape: tuple[int, ...], sigma: float) -> None:
    """Brightness x + b, b ~ N(0, kappa^2), pixel noise N(0, sigma^2 I): y is Gaussian, so Eq. 12 is exact and the
    certified radius xi(h) |beta| / g_hat(beta) of Algorithms 1-2 is Eq. 6's sqrt(sigma^2 + kappa^2) Phi^-1(h) on one
    pixel; on n pixels the noise along the all-ones direction has std sigma / sqrt(n), so sqrt(kappa^2 + sigma^2 / n).
    Tolerance 3% as for Lemma 1's closed form: Monte Carlo error of the sorted cumulative sum (20,000 samples),
    and xi is estimated on the cautious (low) side."""
    kappa, far = 0.2, 0.15
    t = TRANSFORMS["brightness"]
    region = TransformRegion(t, torch.full(shape, 0.4, dtype=torch.float64), torch.tensor([-0.1], dtype=torch.float64),
                             torch.tensor([far], dtype=torch.float64), (Distribution("normal", kappa),))
    bound = engine.gl_bound(region, engine.BoundSettings(samples=20_000, path_points=2, grid=2, pixel_sigma=sigma))
    scale = math.sqrt(kappa**2 + sigma**2 / math.prod(shape))
    assert bound.g_max == pytest.approx(far / scale / math.sqrt(2 * math.pi), rel=0.03)
    for h in (0.6, 0.8, 0.95, 0.99):
        assert bound.xi_at(h) * far / bound.g_max == pytest.approx(scale * stats.norm.ppf(h), rel=0.03, abs=2e-3)


@pytest.mark.parametrize("name", ["contrast", "gamma"])
def test_laplace_gradient_tends_to_lemma1_as_sigma_shrinks(name: str) -> None:
    """On non-additive transforms the Laplace eta at y = phi(x, gamma(alpha, beta)) + sigma eps approaches Lemma 1's
    eta at the same alpha as sigma -> 0 (first order in sigma), sample by sample."""
    from gcert.laplace import laplace_log_density_gradient

    image = 0.2 + 0.6 * torch.rand((1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    region = TRANSFORMS[name].region(image)
    gen = torch.Generator().manual_seed(1)
    alpha, beta = region.sample_smoothing(40, gen), region.upper.clone()
    lemma1 = engine.log_density_gradient(region, alpha, beta)
    noise = torch.randn(40, image.numel(), generator=gen, dtype=torch.float64)
    errors = [float((laplace_log_density_gradient(region, alpha, noise, beta, s) - lemma1).abs().max())
              for s in (1e-2, 1e-3, 1e-4)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01 * float(lemma1.abs().max()), errors


def test_pixel_noise_statistical_soundness_binomial() -> None:
    """With pixel noise sigma on the threshold classifier's 2x2 grey image, h_0(beta) = Phi((t0 - beta) / s),
    s = sqrt(kappa^2 + sigma^2 / 4); a box whose edge h_0 is just below 1/2 must be certified at most alpha of the
    time (binomial test) by the Laplace path and by the closed form, and a box well inside is certified."""
    kappa, radius, alpha, sigma = 0.05, 0.05, 0.05, 0.06
    cert = Smoothing()
    for method, reps in (("closed-form", 1000), ("numerical", 150)):
        fails = 0
        for seed in range(reps):
            opts = cert.parse_options({"n": 200, "n0": 20, "alpha": alpha, "seed": seed, "method": method,
                                       "bound_samples": 3000, "path_points": 2, "grid": 2, "pixel_sigma": sigma})
            fails += cert.certify(_threshold_problem(radius * 0.995, kappa, radius), opts).verdict == "certified"
        assert stats.binomtest(fails, reps, alpha, alternative="greater").pvalue > 1e-3, (method, fails)
        wins = 0
        for seed in range(20):
            opts = cert.parse_options({"n": 200, "n0": 20, "alpha": alpha, "seed": seed, "method": method,
                                       "bound_samples": 3000, "path_points": 2, "pixel_sigma": sigma})
            outcome = cert.certify(_threshold_problem(radius + 2.5 * kappa, kappa, radius), opts)
            wins += outcome.verdict == "certified"
        assert wins >= 15, (method, wins)
        assert outcome.details["smoothing"]["pixel_sigma"] == sigma


def test_pixel_noise_changes_the_samples_and_zero_keeps_them() -> None:
    cert = Smoothing()
    problem = _threshold_problem(0.02, 0.05, 0.05)
    base = cert.certify(problem, cert.parse_options({"seed": 3}))
    zero = cert.certify(problem, cert.parse_options({"seed": 3, "pixel_sigma": 0.0}))
    noisy = cert.certify(problem, cert.parse_options({"seed": 3, "pixel_sigma": 0.5}))
    for outcome in (base, zero):
        outcome.details["smoothing"].pop("sampling_seconds")
    assert base.details == zero.details
    assert noisy.details["smoothing"]["estimation_hits"] < base.details["smoothing"]["estimation_hits"]


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_bad_pixel_sigma_is_one_line(value: float) -> None:
    with pytest.raises(GcertError, match="smoothing.pixel_sigma must be a finite number >= 0") as err:
        Smoothing().parse_options({"pixel_sigma": value})
    assert "\n" not in str(err.value)


def test_pixel_noise_refused_for_chi4_before_any_work() -> None:
    t = TRANSFORMS["blur"]
    region = t.region(_image(0, (1, 8, 8)))
    problem = Problem(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), PixelGenerator(), region, Spec.top1(0, 2))
    cert = Smoothing()
    with pytest.raises(GcertError, match="pixel_sigma > 0 needs normal, lognormal, rayleigh smoothing"):
        cert.certify(problem, cert.parse_options({"pixel_sigma": 0.1}))


@pytest.mark.parametrize("value", ["-0.1", "nan"])
def test_bad_pixel_sigma_on_the_command_line_exits_2(value: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from gcert.cli import main

    out = tmp_path / "r.jsonl"
    with pytest.raises(SystemExit) as exc:
        main(["run", "-c", "smoothing", "-m", "contrast-brightness", "-o", f"smoothing.pixel_sigma={value}",
              "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and not out.exists()
    assert err.count("\n") == 0 and "smoothing.pixel_sigma must be a finite number >= 0" in err


@pytest.mark.parametrize("sigma", [0.05, 0.02])
def test_laplace_gradient_against_quadrature_of_eq5(sigma: float) -> None:
    """Oracle sharing no code: contrast c * x on one pixel, c ~ LN(0, 0.4), pixel noise sigma. log rho(y | beta) of
    Eq. 5 by adaptive quadrature (scipy) and its beta-derivative by central differences; Eq. 12-13's eta is within
    5% of the largest |eta|, and far closer to it than Lemma 1's sigma = 0 limit."""
    from scipy import integrate

    from gcert.laplace import laplace_log_density_gradient

    x0, s, beta = 0.6, 0.4, 1.2
    region = TransformRegion(TRANSFORMS["contrast"], torch.full((1, 1, 1), x0, dtype=torch.float64),
                             torch.tensor([0.8], dtype=torch.float64), torch.tensor([1.25], dtype=torch.float64),
                             (Distribution("lognormal", s),))
    gen = torch.Generator().manual_seed(0)
    alpha, noise = region.sample_smoothing(20, gen), torch.randn(20, 1, generator=gen, dtype=torch.float64)
    b = torch.tensor([beta], dtype=torch.float64)
    laplace = laplace_log_density_gradient(region, alpha, noise, b, sigma)[:, 0]
    lemma1 = engine.log_density_gradient(region, alpha, b)[:, 0]

    def log_rho(y: float, bb: float) -> float:
        width, centre = sigma / (x0 * bb), y / (x0 * bb)  # the likelihood's support in c, 14 widths each side

        def integrand(c: float) -> float:
            return float(stats.norm.pdf(y, x0 * bb * c, sigma) * stats.lognorm.pdf(c, s))

        return math.log(integrate.quad(integrand, max(1e-9, centre - 14 * width), centre + 14 * width, epsabs=0,
                                       epsrel=1e-12, limit=200)[0])

    ys = (x0 * beta * alpha[:, 0] + sigma * noise[:, 0]).tolist()
    exact = torch.tensor([(log_rho(y, beta + 1e-5) - log_rho(y, beta - 1e-5)) / 2e-5 for y in ys],
                         dtype=torch.float64)
    assert float((laplace - exact).abs().max()) < 0.05 * float(exact.abs().max())
    assert float((laplace - exact).pow(2).mean()) < 0.25**2 * float((lemma1 - exact).pow(2).mean())
