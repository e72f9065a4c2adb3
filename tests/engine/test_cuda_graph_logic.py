"""The host-side logic of decode CUDA graphs, checked on the CPU: the ladder of captured batch sizes,
which graph a batch pads up to, when a step may replay a graph, and how inputs and padding rows are
laid out in the static buffer."""
import numpy as np
import pytest
import torch

from engine.cuda_graphs import CudaGraphRunner, DecodeInputs, graph_batch_sizes, padded_batch_size


def test_ladder_is_dense_low_coarse_high_and_ends_at_max():
    assert graph_batch_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 48, 64]
    assert graph_batch_sizes(256) == [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256]
    assert graph_batch_sizes(1) == [1]
    assert graph_batch_sizes(3) == [1, 2, 3]
    assert graph_batch_sizes(100)[-2:] == [96, 100]
    for m in range(1, 300):
        ladder = graph_batch_sizes(m)
        assert ladder == sorted(set(ladder)) and ladder[-1] == m


@pytest.mark.parametrize("max_seqs", [1, 5, 64, 100, 256])
def test_padded_batch_size_is_smallest_fitting_graph(max_seqs):
    ladder = graph_batch_sizes(max_seqs)
    for n in range(1, max_seqs + 1):
        bs = padded_batch_size(n, ladder)
        assert bs in ladder and bs >= n
        assert all(s < n for s in ladder if s < bs)
    assert padded_batch_size(max_seqs + 1, ladder) is None
    assert padded_batch_size(0, ladder) is None


def test_inputs_pad_rows_to_a_dummy_slot_and_empty_context():
    inp = DecodeInputs(max_bs=8, max_blocks=4, device=torch.device("cpu"))
    # capture state: all padding
    assert (inp.device("slots", 8) == -1).all() and (inp.device("context_lens", 8) == 0).all()
    tables = np.array([[3, 7], [5, 0]], dtype=np.int32)
    inp.fill(np.array([11, 12]), np.array([20, 5]), np.array([7 * 16 + 4, 5 * 16 + 5], dtype=np.int64),
             np.array([21, 6], dtype=np.int32), tables, bs=4)
    assert inp.device("input_ids", 4).tolist() == [11, 12, 0, 0]
    assert inp.device("positions", 4).tolist() == [20, 5, 0, 0]
    assert inp.device("slots", 4).tolist() == [116, 85, -1, -1]
    assert inp.device("context_lens", 4).tolist() == [21, 6, 0, 0]
    assert inp.block_tables[:2, :2].tolist() == tables.tolist()
    # a smaller batch afterwards re-pads the rows the bigger one used
    inp.fill(np.array([9]), np.array([21]), np.array([117]), np.array([22], dtype=np.int32), tables[:1], bs=2)
    assert inp.device("slots", 4).tolist()[:2] == [117, -1]
    assert inp.device("context_lens", 2).tolist() == [22, 0]


def test_only_pure_decode_batches_that_fit_replay_a_graph():
    runner = object.__new__(CudaGraphRunner)  # no capture: the decision needs no GPU
    runner.ladder = graph_batch_sizes(8)
    runner.inputs = DecodeInputs(max_bs=8, max_blocks=4, device=torch.device("cpu"))
    assert runner.can_run(np.ones(3, np.int32), 4)
    assert runner.can_run(np.ones(8, np.int32), 1)
    assert not runner.can_run(np.ones(9, np.int32), 1)  # more sequences than the largest graph
    assert not runner.can_run(np.array([1, 5], np.int32), 1)  # a prefill chunk: eager
    assert not runner.can_run(np.ones(2, np.int32), 5)  # a table wider than the static one
    assert not runner.can_run(np.zeros(0, np.int32), 1)


def test_cpu_runner_captures_nothing(tmp_path):
    from engine.model_runner import ModelRunner
    from fixtures.models import make_hf_model
    from shared.settings import Settings

    make_hf_model("llama", tmp_path)
    runner = ModelRunner(Settings(model=str(tmp_path), dtype="float32", device="cpu", num_kv_blocks=8),
                         show_progress=False)
    assert runner.graphs is None
