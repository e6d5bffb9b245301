"""The suite's sensitivity: every planted mistake in conformance/mutants must fail it.

Each case runs the conformance file that should catch the mutant, against the
mutant loaded by its dotted path, and checks that the run fails and that the
failures include the test written for exactly that mistake. A mutant that
passes means the suite has lost a test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# mutant module -> (conformance file, a test that must be among the failures)
BACKEND_MUTANTS = {
    "queue_lifo": ("test_batching_queue.py", "test_queue_fifo_order"),
    "attention_no_scale": (
        "test_attention_forward.py",
        "test_scale_is_inverse_sqrt_head_size_golden",
    ),
    "attention_causal_leak": (
        "test_attention_forward.py",
        "test_causality_future_keys_and_values",
    ),
    "kv_cache_late": (
        "test_attention_kv_cache.py",
        "test_kv_cache_append_writes_at_length",
    ),
    "kv_decode_batch_row0": (
        "test_attention_kv_cache.py",
        "test_kv_decoding_of_a_batch_equals_the_full_forward_over_head_sizes",
    ),
    "ce_smoothing_v_minus_1": (
        "test_losses_cross_entropy.py",
        "test_loss12_label_smoothing_is_eps_over_v",
    ),
    "ce_no_logsumexp": (
        "test_losses_cross_entropy.py",
        "test_bug11_ce_nonnegative_and_finite_at_logit_gap",
    ),
    "gelu_swapped": (
        "test_ffn_activations.py",
        "test_gelu_minus_gelu_tanh_is_pinned",
    ),
    "gemv_drops_k_tail": (
        "test_ffn_linear.py",
        "test_linear_few_rows_match_oracle_over_edge_sizes",
    ),
    "layernorm_unbiased": (
        "test_ffn_layernorm.py",
        "test_layernorm_golden_biased_variance_eps_inside_sqrt",
    ),
    "adam_no_bias_correction": (
        "test_optim_golden.py",
        "test_adam_first_step_moves_by_lr_times_sign",
    ),
    "embedding_overwrite": (
        "test_embedding.py",
        "test_backward_repeated_ids_accumulate_golden",
    ),
}

# mutants of the C backend's fast paths (need the extension built)
C_MUTANTS = {
    "model_ln_grads_swapped": (
        "test_model_training.py",
        "test_forward_and_backward_match_oracle",
    ),
    "model_tied_grad_overwritten": (
        "test_model_training.py",
        "test_forward_and_backward_match_oracle",
    ),
    "model_residual_dropped": (
        "test_model_training.py",
        "test_forward_and_backward_match_oracle",
    ),
    "model_norm_grad_overwrites": (
        "test_model_training.py",
        "test_forward_and_backward_match_oracle",
    ),
    "groups_dw_first_rows": (
        "test_model_groups.py",
        "test_groups_in_one_pass_get_the_bits_of_their_own_passes",
    ),
    "attention_head_stride": (
        "test_model_training.py",
        "test_forward_and_backward_match_oracle",
    ),
    "decode_last_row0": (
        "test_model_decoding.py",
        "test_decoding_steps_equal_the_full_forwards_last",
    ),
    "decode_session_row0": (
        "test_model_decoding.py",
        "test_decoder_sampled_steps_equal_the_full_forwards_last",
    ),
    "ffn_act_skips_edge_rows": (
        "test_ffn_block.py",
        "test_ffn_backward_matches_oracle",
    ),
    "optim_nan_slips_through": (
        "test_optim_bad_inputs.py",
        "test_bad_arrays_raise_typed_errors",
    ),
    "ce_grad_forward_unscaled": (
        "test_model_training.py",
        "test_forward_and_backward_match_oracle",
    ),
    "attention_blocks_dk_unscaled": (
        "test_attention_training_shapes.py",
        "test_mha_forward_and_backward_match_oracle_at_training_shapes",
    ),
    "all_finite_misses_tail": (
        "test_checks.py",
        "test_all_finite_finds_one_bad_value_anywhere",
    ),
    "ce_row_groups_skip_first": (
        "test_losses_cross_entropy.py",
        "test_ce_over_many_rows_matches_oracle",
    ),
}


def failed_tests(output: str) -> set[str]:
    """Names of the test functions listed as FAILED in pytest's -rf summary."""
    return set(re.findall(r"^FAILED \S+::(\w+)", output, flags=re.MULTILINE))


def run_conformance(test_file: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            f"conformance/{test_file}",
            "-q",
            "-rf",
            "--tb=no",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_caught(mutant: str, test_file: str, must_fail: str) -> None:
    """The backend ``conformance.mutants.<mutant>`` fails ``test_file``, and
    ``must_fail`` is among the failures."""
    result = run_conformance(test_file, f"--backend=conformance.mutants.{mutant}")
    assert result.returncode == 1, (
        f"mutant {mutant} was not caught by {test_file}:\n{result.stdout[-2000:]}"
    )
    failed = failed_tests(result.stdout)
    assert must_fail in failed, f"{must_fail} did not fail; failures: {sorted(failed)}"


@pytest.mark.parametrize("mutant", sorted(BACKEND_MUTANTS))
def test_suite_catches_backend_mutant(mutant):
    assert_caught(mutant, *BACKEND_MUTANTS[mutant])


@pytest.mark.parametrize("mutant", sorted(C_MUTANTS))
def test_suite_catches_c_backend_mutant(mutant):
    pytest.importorskip("cllm_c", reason="the C extension is not built")
    assert_caught(mutant, *C_MUTANTS[mutant])


def test_suite_catches_warmup_off_by_one():
    """Schedules are spec functions: the mutant is a plugin patching the spec."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_schedules.py",
            "-q",
            "-rf",
            "--tb=no",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-p",
            "conformance.mutants.warmup_off_by_one",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout[-2000:]
    assert "test_warmup_step_s_uses_lr_times_s_plus_1_over_w" in failed_tests(
        result.stdout
    )


def test_suite_catches_lm_head_first_position():
    """The LM-head slice of logits="last" is spec code: a plugin mutant."""
    result = run_conformance(
        "test_model_decoding.py",
        "--backend=numpy",
        "-p",
        "conformance.mutants.lm_head_first_position",
    )
    assert result.returncode == 1, result.stdout[-2000:]
    assert "test_last_position_logits_equal_the_full_forwards_last" in failed_tests(
        result.stdout
    )


def test_reference_passes_the_files_used_above():
    """Guards the test above: the files must pass on the unmutated reference."""
    files = sorted({f for f, _ in (*BACKEND_MUTANTS.values(), *C_MUTANTS.values())})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *[f"conformance/{f}" for f in files],
            "-q",
            "--tb=short",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "--backend=numpy",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:]
