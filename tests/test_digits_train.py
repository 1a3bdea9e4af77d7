"""The embedded model's training script: pieces whose exactness the committed weights rely on."""

import pytest
import torch

from fade_core.digits import data
from fade_core.digits.model import initial_token_table, tokenize
from fade_core.digits.train import WeightAverage, train_generator, training_data
from fade_core.errors import FadeInputError


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


def test_the_retrained_reference_never_sees_the_concept():
    """The model retrained without a concept (the benchmark's ``retrained`` reference) must not see
    its images, its rendering or its words; everything else stays as the base model's recipe."""
    images, digits, styles = training_data()
    assert len(images) == len(digits) and set(digits.tolist()) == set(range(10)) and styles == list(data.STYLE_NAMES)
    kept_images, kept_digits, kept_styles = training_data(("eight", "bold"))
    assert 8 not in kept_digits.tolist() and set(kept_digits.tolist()) == set(range(10)) - {8}
    assert len(kept_images) == int((digits != 8).sum()) and "bold" not in kept_styles and len(kept_styles) == len(styles) - 1
    with pytest.raises(FadeInputError, match="eleven"):
        training_data(("eleven",))

    # Two steps of 64 captions reach the usual words, never the concept's: its token rows keep
    # their initial values, so the retrained text encoder has no learned embedding of "eight".
    _, text_encoder = train_generator(2, without=("eight",))
    table, initial = text_encoder.get_input_embeddings().weight, initial_token_table()
    changed = lambda word: not torch.equal(table[tokenize([word])[0, 1]], initial[tokenize([word])[0, 1]])  # noqa: E731
    assert not any(changed(word) for word in data.DIGIT_SYNONYMS[8])
    assert any(changed(word) for word in data.DIGIT_SYNONYMS[3])
