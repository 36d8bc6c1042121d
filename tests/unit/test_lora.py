"""sweep_sft.lora on the embedded model: target names checked against the model's modules, the
base reachable with adapters off, trainable-only checkpoint weights, a merged save equal to the
adapter, an adapter folder read as data, and gradient checkpointing through the adapters."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from sweep_sft import lora, modeling
from sweep_sft.config.compose import compose
from sweep_sft.config.validate import validate
from sweep_sft.errors import ConfigError, DataError


def lora_model(*overrides: str):
    """(model_cfg, tokenizer, LoRA-wrapped embedded model on the CPU) with its adapters' B set
    non-zero, so they change the outputs (fresh ones start at B = 0, an exact no-op)."""
    import torch

    cfg = validate(compose(["model.lora.r=4", *overrides])).model
    torch.manual_seed(0)
    tokenizer, model = modeling.load(cfg, torch.device("cpu"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return cfg, tokenizer, model.eval()


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = [[1, 5, 9, 14, 3, 7, 2, 11]]


def test_only_adapters_train_and_the_count_is_printed(capsys) -> None:
    _, _, model = lora_model()
    trainable, total = lora.parameter_counts(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert f"{trainable:,} trainable of {total:,} parameters" in capsys.readouterr().out
    assert set(lora.weights_state(model)) == set(names)  # a checkpoint keeps the adapter only


def test_unknown_target_modules_list_the_linear_layers() -> None:
    with pytest.raises(ConfigError, match="model.lora.target_modules: nope_proj match no module") as err:
        lora_model("model.lora.target_modules=[q_proj,nope_proj]")
    assert "q_proj" in str(err.value) and "k_proj" in str(err.value) and "down_proj" in str(err.value)
    cfg, _, model = lora_model("model.lora.target_modules=[q_proj,v_proj]")
    assert {n.split(".")[-4] for n in lora.weights_state(model)} == {"q_proj", "v_proj"}


def test_adapters_off_is_the_base_model() -> None:
    import torch

    _, _, model = lora_model()
    _, base = modeling.load(validate(compose([])).model, torch.device("cpu"))
    ids = torch.tensor(IDS)
    assert not torch.allclose(logits(model, ids), logits(base, ids), atol=1e-4)  # the adapters do something
    with lora.disabled(model):
        torch.testing.assert_close(logits(model, ids), logits(base, ids), rtol=0, atol=1e-6)
    with lora.disabled(base):  # a plain model: as is
        torch.testing.assert_close(logits(base, ids), logits(base, ids))


def test_checkpoint_weights_round_trip_and_a_wrong_adapter_is_refused() -> None:
    import torch

    _, _, model = lora_model()
    state = {k: v.clone() for k, v in lora.weights_state(model).items()}
    _, _, other = lora_model("trainer.seed=1")
    with torch.no_grad():
        for name, param in other.named_parameters():
            if "lora_B" in name:
                param.zero_()
    lora.load_weights(other, state)
    torch.testing.assert_close(logits(other, torch.tensor(IDS)), logits(model, torch.tensor(IDS)))
    state.pop(next(iter(state)))
    with pytest.raises(ConfigError, match="trainer.resume: the checkpoint's weights are not this trial's LoRA"):
        lora.load_weights(other, state)


def test_merged_save_is_a_plain_model_equal_to_the_adapter(tmp_path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    cfg, _, model = lora_model()
    ids = torch.tensor(IDS)
    expected = logits(model, ids)
    model.save_pretrained(tmp_path / "adapter")
    assert lora.is_adapter_dir(tmp_path / "adapter")
    _, base = modeling.load(lora.without(cfg), torch.device("cpu"))
    reloaded = lora.load_adapter(base, tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded, ids), expected, rtol=0, atol=1e-5)

    lora.to_save(replace(cfg.lora, merge=True), model).save_pretrained(tmp_path / "merged")
    assert not (tmp_path / "merged" / lora.ADAPTER_CONFIG).exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    torch.testing.assert_close(logits(merged, ids), expected, rtol=0, atol=1e-5)


def test_an_adapter_folder_of_another_kind_is_refused(tmp_path) -> None:
    import torch

    (tmp_path / lora.ADAPTER_CONFIG).write_text(json.dumps({"peft_type": "PROMPT_TUNING"}))
    _, base = modeling.load(validate(compose([])).model, torch.device("cpu"))
    with pytest.raises(DataError, match="peft_type 'PROMPT_TUNING'; only LoRA adapters"):
        lora.load_adapter(base, tmp_path)
    (tmp_path / lora.ADAPTER_CONFIG).write_text(json.dumps({"peft_type": "LORA"}))
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")  # never unpickled
    with pytest.raises(DataError, match="no adapter_model.safetensors"):
        lora.load_adapter(base, tmp_path)


def test_gradient_checkpointing_gives_the_adapters_the_same_gradients() -> None:
    import torch

    grads = []
    for checkpointing in (False, True):
        _, _, model = lora_model("model.lora.dropout=0")
        model.train()
        if checkpointing:  # as train/engine.py enables it
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        ids = torch.tensor(IDS)
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert grads[0].keys() == grads[1].keys() and all(g.abs().sum() > 0 for g in grads[1].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


def test_added_special_tokens_train_under_lora(tmp_path) -> None:
    """A token of model.add_special_tokens gets a trainable embedding row (the rest stay frozen),
    and the saved adapter carries it back."""
    import torch

    cfg, tokenizer, model = lora_model("model.add_special_tokens=['<tool_call>']")
    new_id = tokenizer.convert_tokens_to_ids("<tool_call>")
    before = model.get_input_embeddings()(torch.tensor([[new_id, 5]])).detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    model(input_ids=torch.tensor([[1, new_id, 9, 14]]), labels=torch.tensor([[1, new_id, 9, 14]])).loss.backward()
    optimizer.step()
    after = model.get_input_embeddings()(torch.tensor([[new_id, 5]])).detach()
    assert not torch.allclose(after[0, 0], before[0, 0])  # the new token's row learned
    assert torch.equal(after[0, 1], before[0, 1])  # an old token's row did not
    model.eval()
    model.save_pretrained(tmp_path)
    _, base = modeling.load(lora.without(cfg), torch.device("cpu"), tokenizer=tokenizer)
    reloaded = lora.load_adapter(base, tmp_path)
    ids = torch.tensor([[1, new_id, 9, 14]])
    assert torch.allclose(logits(reloaded, ids), logits(model, ids), atol=1e-5)


def test_an_adapter_config_cannot_rewrite_or_restructure_the_base(tmp_path) -> None:
    """adapter_config.json is data: an init that rewrites the base weights (olora, pissa) is not
    run on load, and fields that change the model's structure are refused."""
    import torch

    cfg, _, model = lora_model()
    ids = torch.tensor(IDS)
    expected = logits(model, ids)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / lora.ADAPTER_CONFIG).read_text())
    (tmp_path / lora.ADAPTER_CONFIG).write_text(json.dumps({**saved, "init_lora_weights": "olora"}))
    _, base = modeling.load(lora.without(cfg), torch.device("cpu"))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    reloaded = lora.load_adapter(base, tmp_path)
    torch.testing.assert_close(logits(reloaded, ids), expected, rtol=0, atol=1e-5)
    names = {k: k.replace("base_model.model.", "").replace(".base_layer", "") for k in reloaded.state_dict()}
    after = {names[k]: v for k, v in reloaded.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)
    (tmp_path / lora.ADAPTER_CONFIG).write_text(json.dumps({**saved, "layer_replication": [[0, 1], [0, 1]]}))
    _, base = modeling.load(lora.without(cfg), torch.device("cpu"))
    with pytest.raises(DataError, match="layer_replication set"):
        lora.load_adapter(base, tmp_path)


def test_generation_leaves_the_wrapped_models_generation_config_as_it_was() -> None:
    """Evaluation generates with transformers' defaults; afterwards the base inside a LoRA model
    keeps its own sampling defaults (saved with it when merged)."""
    import torch

    from sweep_sft.evaluate.generation import plain_generation

    _, _, model = lora_model()
    base = model.get_base_model()
    base.generation_config.temperature, base.generation_config.do_sample = 0.6, True
    with plain_generation(model):
        model.generate(input_ids=torch.tensor(IDS), max_new_tokens=2, do_sample=False)
    assert base.generation_config.temperature == 0.6 and base.generation_config.do_sample


def test_evaluating_an_adapter_whose_base_is_not_here_names_the_key(tmp_path) -> None:
    """A run trained elsewhere names a base this machine lacks: one line saying which key to set."""
    import torch

    from sweep_sft.evaluate import standalone

    _, tokenizer, model = lora_model()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config = validate(compose(["model.lora.r=4", "model.name_or_path=/elsewhere/base"]))
    adapter_cfg = replace(lora.without(config.model), name_or_path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"model.name_or_path=/elsewhere/base: the base model of the adapter in .*"
                       r"give a local copy of it on this command line"):
        standalone._adapter(config, adapter_cfg, tmp_path, torch.device("cpu"))
