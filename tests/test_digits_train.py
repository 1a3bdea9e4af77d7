"""The embedded model's training script: pieces whose exactness the committed weights rely on."""

import torch

from fade_core.digits.train import WeightAverage


def test_weight_average_matches_torch_averaged_model_bit_for_bit():
    # The row-restricted average must give exactly what AveragedModel's EMA gives over the whole
    # table, or `python -m fade_core.digits.train` would end with other weights than before it.
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"table": torch.nn.Embedding(50, 4, sparse=True), "head": torch.nn.Linear(4, 1)})
    reference = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    dense = list(model["head"].parameters())
    average = WeightAverage(dense, model["table"].weight, decay=0.9)
    optimizers = [torch.optim.AdamW(dense, lr=0.1), torch.optim.SparseAdam([model["table"].weight], lr=0.1)]
    for step in range(6):
        tokens = torch.randint(0, 10 + 5 * step, (3, 2))  # later steps reach new rows
        loss = model["head"](model["table"](tokens)).square().mean()
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        reference.update_parameters(model)
        average.update(tokens)
    assert not torch.equal(model["head"].weight, reference.module["head"].weight)  # the average lags
    average.copy_to_model()
    for name, value in reference.module.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
