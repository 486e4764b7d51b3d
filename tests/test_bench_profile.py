"""`grow-megatron bench --profile`: kernel names sorted into categories, the breakdown's sums,
the idle share, and one real (CPU) profile of a matmul step."""

from __future__ import annotations

import ast
import glob
import math
import os

import pytest
import torch

from grow_megatron.bench import profile as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Names as the profiler reports them on an H100 (cuBLAS, cuDNN, flash, inductor, NCCL) and
# aten op names of a CPU dry run.
NAMES = {
    P.GEMM: [
        "nvjet_tst_128x256_64x4_1x2_h_bz_coopB_TNN",
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off",
        "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>(T1::Params)",
        "aten::mm",
        "aten::addmm",
        "triton_tem_fused_mm_3",
        "ampere_bf16_s1688gemm_bf16_128x128_ldg8_f2f_tn",
    ],
    P.ATTENTION: [
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4, false>>(Flash_params)",
        "fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<...>::Params)",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64_4x1x1_kernel0_0",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    ],
    P.TRITON: ["_rms_norm_fwd_kernel", "_rms_norm_bwd_kernel", "_swiglu_fwd_kernel", "_rope_kernel", "_ce_bwd_kernel"],
    P.OPTIMIZER: [
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)"
        "::TensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4>>",
        "aten::_foreach_mul_",
        "aten::_fused_adamw_",
    ],
    P.COMMUNICATION: [
        "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevComm*, unsigned long, ncclWork*)",
        "ncclDevKernel_ReduceScatter_Sum_f32_RING_LL",
        "gloo:all_gather",
    ],
    P.MEMORY: ["Memcpy DtoD (Device -> Device)", "Memset (Device)", "Memcpy HtoD (Pinned -> Device)"],
    P.ELEMENTWISE: [
        "triton_poi_fused_add_mul_silu_0",
        "triton_red_fused__to_copy_mean_pow_1",
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>",
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float>>",
        "aten::copy_",
        "aten::mul",
    ],
}


@pytest.mark.parametrize("category", sorted(NAMES))
def test_categorize(category):
    for name in NAMES[category]:
        assert P.categorize(name) == category, name


def test_our_kernel_list_matches_the_sources():
    """Every launched @triton.jit function of grow_megatron.kernels (helpers called from a kernel
    are not launches and do not end in _kernel) is in OUR_TRITON_KERNELS, and nothing else."""
    found = set()
    for path in glob.glob(os.path.join(ROOT, "kernels", "*.py")):
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.FunctionDef)
                and node.name.endswith("_kernel")
                and any("jit" in ast.unparse(d) for d in node.decorator_list)
            ):
                found.add(node.name)
    assert found == set(P.OUR_TRITON_KERNELS)


def test_busy_seconds_is_the_union():
    assert P.busy_seconds([]) == 0.0
    # [0,2) and [1,3) overlap -> 3; [5,6) apart -> 1; [5.5,5.7) inside -> 0.
    assert P.busy_seconds([(1.0, 3.0), (0.0, 2.0), (5.0, 6.0), (5.5, 5.7)]) == pytest.approx(4.0)
    assert P.busy_seconds([(0.0, 1.0), (1.0, 2.0)]) == pytest.approx(2.0)


def test_breakdown_sums_shares_and_idle():
    rows = [
        ("nvjet_a", 0.004),
        ("nvjet_a", 0.004),
        ("sm90_xmma_gemm_b", 0.002),
        ("flash_fwd_kernel", 0.003),
        ("_rms_norm_fwd_kernel", 0.0005),
        ("_rms_norm_bwd_kernel", 0.0015),
        ("multi_tensor_apply_kernel<FusedAdam>", 0.001),
        ("Memset (Device)", 0.0002),
        ("vectorized_elementwise_kernel", 0.0018),
    ]
    b = P.breakdown(rows, steps=2, wall_s=0.025, busy_s=0.017, step_s_unprofiled=0.010, top=3)
    total = sum(s for _, s in rows)
    assert b["device_time_s"] == pytest.approx(total)
    cats = {c["category"]: c for c in b["categories"]}
    assert set(cats) == set(P.CATEGORIES)
    assert cats[P.GEMM]["seconds"] == pytest.approx(0.010)
    assert cats[P.ATTENTION]["seconds"] == pytest.approx(0.003)
    assert cats[P.TRITON]["seconds"] == pytest.approx(0.002)
    assert cats[P.COMMUNICATION]["seconds"] == 0.0
    assert cats[P.GEMM]["ms_per_step"] == pytest.approx(5.0)
    assert math.fsum(c["fraction"] for c in b["categories"]) == pytest.approx(1.0)
    assert [k["name"] for k in b["triton_kernels"]] == ["_rms_norm_bwd_kernel", "_rms_norm_fwd_kernel"]
    # Top: aggregated by name (nvjet_a twice), largest first, cut at `top`.
    assert [(k["name"], k["calls"]) for k in b["top"]] == [
        ("nvjet_a", 2),
        ("flash_fwd_kernel", 1),
        ("sm90_xmma_gemm_b", 1),
    ]
    assert b["top"][0]["seconds"] == pytest.approx(0.008) and b["top"][0]["category"] == P.GEMM
    assert b["idle_fraction"] == pytest.approx(1 - 0.017 / 0.025)
    # Per step 8.5 ms busy against a 10 ms unprofiled step.
    assert b["idle_fraction_unprofiled"] == pytest.approx(0.15)
    assert b["wall_ms_per_step"] == pytest.approx(12.5)


def test_breakdown_of_nothing():
    b = P.breakdown([], steps=1, wall_s=0.5, busy_s=0.0)
    assert b["device_time_s"] == 0 and b["top"] == [] and b["idle_fraction"] == 1.0
    assert all(c["fraction"] is None for c in b["categories"])


def test_profile_steps_on_cpu():
    a, w = torch.randn(64, 64), torch.randn(64, 64, requires_grad=True)

    def step():
        (a @ w).relu().sum().backward()

    res = P.profile_steps(step, 2, lambda: None, gpu=False, step_s_unprofiled=None)
    cats = {c["category"]: c["seconds"] for c in res["categories"]}
    assert cats[P.GEMM] > 0 and res["steps"] == 2
    assert 0 < res["busy_s"] <= res["wall_s"] and 0 <= res["idle_fraction"] < 1
    assert any(k["name"] in ("aten::mm", "aten::addmm") for k in res["top"])
    # A failing step is reported, not raised.
    bad = P.safe_profile(lambda: 1 / 0, 1, lambda: None, gpu=False)
    assert bad["error"].startswith("ZeroDivisionError")
