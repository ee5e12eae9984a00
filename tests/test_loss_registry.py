"""The loss-term registry: every term declared once, its values, gradients and chance values those of the
per-term chains it replaced (frozen below, on fixed random inputs)."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from cxrfa.config import LossConfig
from cxrfa.losses import (
    LossTerm,
    TermBatch,
    chance_levels,
    compute_terms,
    get_term,
    list_terms,
    register_term,
    weighted_total,
)

NAN = float("nan")

CONFIGS: dict[str, dict[str, object]] = {
    "bce": dict(
        semantic=0.5, report=0.5, domain=0.1, orth=0.1, consistency=0.1, expression=1.0, supcon=0.3, coral=0.4
    ),
    "asl_mmd": dict(
        cls="asl",
        domain_kind="mmd",
        tau=0.2,
        semantic=0.5,
        report=0.5,
        domain=0.1,
        orth=0.1,
        consistency=0.1,
        expression=1.0,
        supcon=0.3,
        coral=0.4,
    ),
    "focal": dict(cls="focal", semantic=1.0, domain=1.0, supcon=1.0, expression=0.5),
}

# Per config: term -> (value as float.hex, {input: (L2 norm, dot with a fixed probe) of d term / d input}), "total"
# the weighted sum; and each chance value as float.hex. The values come from the code before the registry ("orth"
# chance excluded: its reference was corrected, see test_losses.py). The gradients were first frozen as sha256
# digests of that code's bits; another CPU's vector units round float32 sums in another order (the values stayed
# equal to the bit, the gradients' digests did not), so they are kept as two numbers per gradient, taken from the
# registry while it still matched those digests bit for bit, and compared to float32 precision.
FROZEN = {
    "bce": {
        "terms": {
            "cls": (
                "0x1.afd69c0000000p-1",
                {"logits_a": (0.051647386, 0.0411140545), "logits_b": (0.042971863, 0.0470367212)},
            ),
            "semantic": ("0x1.8a7eda0000000p+3", {"scores": (4.57091178, 5.22632856)}),
            "report": (
                "0x1.44263a0000000p+2",
                {"image_emb": (2.20454625, 0.973553423), "report_emb": (2.02256236, 0.64518509)},
            ),
            "domain": (
                "0x1.3d4cb00000000p+2",
                {
                    "scores": (3.26176239, 4.17572987),
                    "features": (0.142078636, -0.215807908),
                    "labels_emb": (0.172070061, -0.165985254),
                },
            ),
            "coral": ("0x1.9f178e0000000p-2", {"pooled": (0.415150444, 0.202948849)}),
            "orth": ("0x1.0aeb6c0000000p-3", {"labels_emb": (0.120650393, -0.166529578)}),
            "consistency": (
                "0x1.c67eaa0000000p+2",
                {"logits_a": (2.15777697, -1.6052766), "logits_b": (2.06862803, 0.0663543)},
            ),
            "expression": ("0x1.482e900000000p-2", {"logits": (0.035946944, 0.0519249652)}),
            "supcon": ("0x1.b9459a0000000p+2", {"pooled": (2.88169087, 3.70944693)}),
            "total": (
                "0x1.a9eab80000000p+3",
                {
                    "logits": (0.035946944, 0.0519249652),
                    "logits_a": (0.220317409, -0.119413585),
                    "logits_b": (0.203239599, 0.053672107),
                    "scores": (2.49982981, 3.03073717),
                    "features": (0.014207864, -0.0215807885),
                    "labels_emb": (0.0218986137, -0.0332514865),
                    "pooled": (0.895829601, 1.19401357),
                    "image_emb": (1.10227313, 0.486776711),
                    "report_emb": (1.01128118, 0.322592545),
                },
            ),
        },
        "chance": {
            "cls": "0x1.2c946a0000000p-1",
            "semantic": "0x1.8c7fc60000000p+0",
            "report": "0x1.bf744a0000000p+0",
            "domain": "0x1.62e42fefa39efp-1",
            "orth": "0x1.4cc1e40000000p-1",
            "consistency": "0x1.0a2b23f3bab73p+1",
            "expression": "0x1.9caef60000000p-3",
            "supcon": "0x1.f2272c0000000p+0",
        },
    },
    "asl_mmd": {
        "terms": {
            "cls": (
                "0x1.9ea8500000000p-2",
                {"logits_a": (0.0369202572, 0.0223011875), "logits_b": (0.0327327258, 0.0204011694)},
            ),
            "semantic": ("0x1.97e6ca0000000p+2", {"scores": (2.16231488, 2.59277037)}),
            "report": (
                "0x1.7ff7100000000p+1",
                {"image_emb": (0.96224417, 0.300406691), "report_emb": (0.969414979, 0.142342543)},
            ),
            "domain": (
                "0x1.8ae1f20000000p+1",
                {
                    "scores": (1.57110667, 2.00972956),
                    "features": (0.144837323, -0.233771942),
                    "labels_emb": (0.223897016, -0.317609478),
                },
            ),
            "coral": ("0x1.9f178e0000000p-2", {"pooled": (0.415150444, 0.202948849)}),
            "orth": ("0x1.0aeb6c0000000p-3", {"labels_emb": (0.120650393, -0.166529578)}),
            "consistency": (
                "0x1.fd40420000000p+1",
                {"logits_a": (1.01921581, -0.614398715), "logits_b": (0.983406029, -0.00196074708)},
            ),
            "expression": ("0x1.482e900000000p-2", {"logits": (0.035946944, 0.0519249652)}),
            "supcon": ("0x1.dbd1660000000p+1", {"pooled": (1.22127914, 1.77900422)}),
            "total": (
                "0x1.da290c0000000p+2",
                {
                    "logits": (0.035946944, 0.0519249652),
                    "logits_a": (0.107724318, -0.039138682),
                    "logits_b": (0.0996279217, 0.0202050877),
                    "scores": (1.19153159, 1.49735816),
                    "features": (0.0144837322, -0.023377195),
                    "labels_emb": (0.0325610712, -0.0484139046),
                    "pooled": (0.415583387, 0.614880813),
                    "image_emb": (0.481122085, 0.150203346),
                    "report_emb": (0.484707489, 0.0711712715),
                },
            ),
        },
        "chance": {
            "cls": "0x1.55d4820000000p-2",
            "semantic": "0x1.8c7fc60000000p+0",
            "report": "0x1.bf744a0000000p+0",
            "domain": "0x1.62e42fefa39efp-1",
            "orth": "0x1.4cc1e40000000p-1",
            "consistency": "0x1.0a2b23f3bab73p+1",
            "expression": "0x1.9caef60000000p-3",
            "supcon": "0x1.f2272c0000000p+0",
        },
    },
    "focal": {
        "terms": {
            "cls": (
                "0x1.7c37240000000p-2",
                {"logits_a": (0.0488104141, 0.0402788311), "logits_b": (0.037614608, 0.0472262234)},
            ),
            "semantic": ("0x1.8a7eda0000000p+3", {"scores": (4.57091178, 5.22632856)}),
            "domain": (
                "0x1.3d4cb00000000p+2",
                {
                    "scores": (3.26176239, 4.17572987),
                    "features": (0.142078636, -0.215807908),
                    "labels_emb": (0.172070061, -0.165985254),
                },
            ),
            "expression": ("0x1.482e900000000p-2", {"logits": (0.035946944, 0.0519249652)}),
            "supcon": ("0x1.b9459a0000000p+2", {"pooled": (2.88169087, 3.70944693)}),
            "total": (
                "0x1.8b653a0000000p+4",
                {
                    "logits": (0.017973472, 0.0259624826),
                    "logits_a": (0.0488104141, 0.0402788311),
                    "logits_b": (0.037614608, 0.0472262234),
                    "scores": (7.06550234, 9.40205874),
                    "features": (0.142078636, -0.215807908),
                    "labels_emb": (0.172070061, -0.165985254),
                    "pooled": (2.88169087, 3.70944693),
                },
            ),
        },
        "chance": {
            "cls": "0x1.851e320000000p-3",
            "semantic": "0x1.8c7fc60000000p+0",
            "domain": "0x1.62e42fefa39efp-1",
            "expression": "0x1.9caef60000000p-3",
            "supcon": "0x1.f2272c0000000p+0",
        },
    },
}


def _inputs() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """A full output dict (both heads, text branch, reports with one duplicate and one missing), NaN targets."""
    g = torch.Generator().manual_seed(1234)
    b, c, d, dt = 8, 5, 6, 7

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_(True)

    targets = (torch.rand(b, c, generator=g) < 0.35).float()
    targets[torch.rand(b, c, generator=g) < 0.15] = NAN
    report = torch.randn(b, dt, generator=g)
    report[3] = report[1]  # one duplicated report
    report[6] = NAN  # one image without a report
    out = {
        "logits": leaf(b, c),
        "logits_a": leaf(b, c),
        "logits_b": leaf(b, c),
        "scores": leaf(b, c),
        "features": leaf(b, c, d),
        "labels_emb": leaf(c, d),
        "pooled": leaf(b, d),
        "image_emb": leaf(b, d),
        "report_emb": leaf(b, d),
        "labels_raw": torch.randn(c, dt, generator=g) + 2.0,
        "has_report": torch.isfinite(report).all(-1),
        "report_same": (report.unsqueeze(1) == report.unsqueeze(0)).all(-1),
    }
    return out, targets, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def _fingerprint(t: torch.Tensor) -> tuple[float, float]:
    """(L2 norm, dot with a fixed normal probe): a sign flip, a swapped entry or a scaled gradient moves one."""
    probe = torch.randn(t.shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    x = t.detach().double()
    return x.norm().item(), (x * probe).sum().item()


def _grads(value: torch.Tensor, leaves: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    grads = torch.autograd.grad(value, list(leaves.values()), retain_graph=True, allow_unused=True)
    return {k: _fingerprint(gr) for k, gr in zip(leaves, grads, strict=True) if gr is not None}


def _close(a: float, b: float) -> bool:
    """Equal to float32 precision: a few ulps of the term, whatever order the CPU summed it in."""
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b)) + 1e-8


@pytest.mark.parametrize("name", list(CONFIGS))
def test_terms_values_gradients_and_chance_as_frozen(name: str) -> None:
    out, targets, domains = _inputs()
    cfg = LossConfig(**CONFIGS[name])  # type: ignore[arg-type]
    leaves = {k: v for k, v in out.items() if v.requires_grad}
    terms = compute_terms(out, targets, cfg, domains)
    got = {k: (v.item(), _grads(v, leaves)) for k, v in terms.items()}
    total = weighted_total(terms, cfg)
    got["total"] = (total.item(), _grads(total, leaves))
    expected = FROZEN[name]
    assert list(got) == list(expected["terms"])  # the same terms, in the same (summation) order
    for term, (value, grads) in got.items():
        want_value, want_grads = expected["terms"][term]
        assert _close(value, float.fromhex(want_value)), (term, value, want_value)
        assert list(grads) == list(want_grads), term  # gradients reach exactly the same inputs
        for leaf, pair in grads.items():
            assert all(map(_close, pair, want_grads[leaf])), (term, leaf, pair, want_grads[leaf])
    chance = {k: float(v).hex() for k, v in chance_levels(out, targets, cfg, domains).items()}
    assert {k: v for k, v in chance.items() if k != "orth"} == {
        k: v for k, v in expected["chance"].items() if k != "orth"
    }
    assert ("orth" in chance) == ("orth" in expected["chance"])


def test_every_weight_field_is_one_declared_term_in_computation_order() -> None:
    assert set(list_terms()) == set(LossConfig.term_names())
    assert list_terms()[0] == "cls"
    term = get_term("supcon")
    assert (term.metric, term.chance_metric) == ("train/loss_supcon", "train/chance_supcon")
    with pytest.raises(KeyError, match="known: cls, semantic"):
        get_term("mystery")


def test_a_declaration_needs_a_weight_field_and_a_unique_name() -> None:
    def zero(b: TermBatch) -> torch.Tensor:
        return b.targets.new_zeros(())

    with pytest.raises(ValueError, match="no weight field in LossConfig"):
        register_term(LossTerm("mystery", zero, chance=None))
    with pytest.raises(ValueError, match="registered twice"):
        register_term(LossTerm("semantic", zero, chance=None))
    assert "mystery" not in list_terms()


def test_a_term_is_on_only_with_weight_inputs_and_readiness() -> None:
    out, targets, domains = _inputs()
    cfg = LossConfig(report=1.0, coral=1.0, consistency=1.0)
    assert set(compute_terms(out, targets, cfg, domains)) == {"cls", "report", "coral", "consistency"}
    one_report = {**out, "has_report": torch.arange(8) == 0}  # report: needs two reports in the batch
    no_b = {k: v for k, v in one_report.items() if k != "logits_b"}  # consistency: needs both heads
    assert set(compute_terms(no_b, targets, cfg, None)) == {"cls"}  # coral: needs domain ids


class _FactoryWatch(TorchFunctionMode):
    """Records every torch factory call that does not say where its tensor lives: on a GPU such a tensor is
    made on the CPU and meets the batch's CUDA tensors (a ``supcon > 0`` cell failed so)."""

    FACTORIES = frozenset(
        {torch.zeros, torch.ones, torch.empty, torch.full, torch.eye, torch.arange, torch.rand, torch.randn}
    )

    def __init__(self) -> None:
        super().__init__()
        self.undirected: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in self.FACTORIES and kwargs.get("device") is None:
            self.undirected.append(func.__name__)
        return func(*args, **kwargs)


def test_every_tensor_of_a_term_is_made_on_the_inputs_device() -> None:
    out, targets, domains = _inputs()
    cfg = LossConfig(**CONFIGS["bce"])  # type: ignore[arg-type]
    no_reports = {**out, "has_report": torch.zeros(8, dtype=torch.bool)}  # the terms' empty-batch branches
    with _FactoryWatch() as watch:
        compute_terms(out, targets, cfg, domains)
        chance_levels(out, targets, cfg, domains)
        compute_terms(no_reports, targets * 0, cfg, domains)
        chance_levels(no_reports, targets * 0, cfg, domains)
    assert watch.undirected == []
