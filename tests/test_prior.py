"""Victims started from a pretrained prior, ``unlearnable pretrain``, and early stopping (``st-es``)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import make_learnable
from unlearnable.cli import main
from unlearnable.data.dataset import ImageDataset
from unlearnable.errors import UnlearnableError
from unlearnable.experiments.config import parse_spec
from unlearnable.models import build_model, model_names
from unlearnable.models.checkpoint import save_model
from unlearnable.train import get_protocol, victim_preset
from unlearnable.train.prior import head_parameter_names, parameter_groups
from unlearnable.train.pretrain import without_images
from unlearnable.train.standard import TrainResult


def tiny(n=440, size=12, train=240, seed=1):
    x, y = make_learnable(n, size=size, seed=seed)
    return ImageDataset(x[:train], y[:train], list("abcd")), ImageDataset(x[train:], y[train:], list("abcd"))


def run(capsys, *argv):
    code = main(["-q", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def cfg(**kw):
    return victim_preset("cpu", model="cnn-small", device="cpu", batch_size=64, **kw)


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    """A cnn-small trained 2 epochs on 12 px grey 4-class data, saved as a checkpoint folder."""
    train, test = tiny(seed=5)
    res = get_protocol("st")(train, test, cfg(epochs=2), seed=0)
    folder = tmp_path_factory.mktemp("prior")
    save_model(res.model, folder, name="cnn-small", in_channels=1, num_classes=4, image_size=12,
               extra={"provenance": {"images": len(train)}})
    return folder, {k: v.clone() for k, v in res.model.state_dict().items()}


@pytest.mark.parametrize("name", ["cnn", "cnn-small", "lenet-5", "2-nn", "resnet-18"])
def test_head_parameters_are_found_by_the_model_not_by_name(name):
    if name not in model_names():
        pytest.skip(f"{name} not registered")
    model = build_model(name, 1, 4, 28)
    head = head_parameter_names(model, 1, 28)
    params = dict(model.named_parameters())
    assert head and set(head) < set(params)
    z = model.features(torch.zeros(2, 1, 28, 28))
    n_head = sum(params[n].numel() for n in head)
    assert n_head == z.shape[1] * 4 + 4  # one linear layer from the features to 4 logits


@pytest.mark.parametrize("mode", ["full", "low-lr", "linear-probe"])
def test_start_from_prior_loads_the_backbone_and_trains_as_the_mode_says(prior, mode):
    folder, weights = prior
    train, test = tiny(seed=7)
    res = get_protocol("st")(train, test, cfg(epochs=1, init=str(folder), finetune=mode), seed=3)
    assert res.extra["prior"]["finetune"] == mode and res.extra["prior"]["provenance"] == {"images": 240}
    after = {k: v.cpu() for k, v in res.model.state_dict().items()}
    head = head_parameter_names(res.model, 1, 12)
    head_modules = {n.rsplit(".", 1)[0] for n in head}
    backbone = [k for k in after if k.rsplit(".", 1)[0] not in head_modules]
    changed = [k for k in backbone if not torch.equal(after[k], weights[k])]
    if mode == "linear-probe":  # weights and batch-norm statistics are the prior's, untouched
        assert changed == []
    else:
        assert any(k.endswith("weight") for k in changed)
    scratch = get_protocol("st")(train, test, cfg(epochs=1), seed=3)
    assert "prior" not in scratch.extra
    assert not torch.equal(scratch.model.state_dict()[backbone[0]].cpu(), after[backbone[0]])


def test_low_lr_gives_the_backbone_a_fraction_of_the_rate():
    model = build_model("cnn-small", 1, 4, 12)
    head = head_parameter_names(model, 1, 12)
    groups = parameter_groups(model, head, "low-lr", 0.25, lr=0.1)
    opt = torch.optim.SGD(groups, lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.025), 0.1]
    assert sum(p.numel() for p in groups[1]["params"]) == sum(dict(model.named_parameters())[n].numel() for n in head)
    assert len(parameter_groups(model, head, "linear-probe", 0.1, lr=0.1)) == 1


def test_a_prior_that_does_not_fit_is_a_one_line_error(prior, tmp_path):
    folder, _ = prior
    train, test = tiny(seed=7)
    with pytest.raises(UnlearnableError, match="holds model 'cnn-small'; the victim is 'cnn'"):
        get_protocol("st")(train, test, victim_preset("cpu", device="cpu", epochs=1, init=str(folder)), seed=0)
    big_train, big_test = tiny(size=16)
    with pytest.raises(UnlearnableError, match="1-channel 12 px images; this data is 1-channel 16 px"):
        get_protocol("st")(big_train, big_test, cfg(epochs=1, init=str(folder)), seed=0)
    # a tensor of another shape (the model.json lies about the width of the data it saw)
    other = tmp_path / "other"
    save_model(build_model("cnn-small", 3, 4, 12), other, name="cnn-small", in_channels=1, num_classes=4,
               image_size=12)
    with pytest.raises(UnlearnableError, match="has shape"):
        get_protocol("st")(train, test, cfg(epochs=1, init=str(other)), seed=0)
    # a pickle where the weights should be is refused, never unpickled
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.json").write_text((folder / "model.json").read_text())
    torch.save({"x": torch.zeros(1)}, bad / "model.safetensors")
    with pytest.raises(UnlearnableError, match="initial checkpoint: .*not usable weights"):
        get_protocol("st")(train, test, cfg(epochs=1, init=str(bad)), seed=0)
    with pytest.raises(UnlearnableError, match="needs an initial checkpoint"):
        cfg(finetune="linear-probe")
    with pytest.raises(UnlearnableError, match="unknown finetune mode"):
        cfg(init=str(folder), finetune="half")
    with pytest.raises(UnlearnableError, match="does not start from a checkpoint"):
        get_protocol("simclr")(train, test, cfg(epochs=1, init=str(folder)), seed=0)


def test_without_images_matches_pixels_not_positions():
    x, y = make_learnable(50, size=8, seed=2)
    data = ImageDataset(x, y, list("abcd"))
    rest, dropped = without_images(data, [x[[40, 3, 17]][::-1]])
    assert dropped == 3 and len(rest) == 47
    assert not ({3, 17, 40} & set(rest.indices.tolist()))
    with pytest.raises(UnlearnableError, match="cannot be the same images"):
        without_images(data, [np.zeros((2, 9, 9, 1), np.uint8)])
    with pytest.raises(UnlearnableError, match="no training image is left"):
        without_images(data, [x])


def test_st_es_stops_on_a_validation_split_apart_from_the_test_images():
    train, test = tiny(seed=3)
    res = get_protocol("st-es")(train, test, cfg(epochs=3), seed=1, options={"val_images": 40})
    es = res.extra["early_stopping"]
    assert es["val_images"] == 40 and es["test_images"] == len(test) - 40
    vals = [h["val_acc"] for h in res.history]
    chosen = res.history[es["epoch"] - 1]
    assert chosen["val_acc"] == max(vals) and vals.index(max(vals)) == es["epoch"] - 1  # the first best
    assert res.test_acc == chosen["test_acc"] and es["last_epoch_test_acc"] == res.history[-1]["test_acc"]
    plain = get_protocol("st")(train, test, cfg(epochs=3), seed=1)
    assert "val_acc" not in plain.history[0] and "early_stopping" not in plain.extra
    with pytest.raises(UnlearnableError, match="val_images must be an integer"):
        get_protocol("st-es")(train, test, cfg(epochs=1), seed=1, options={"val_images": len(test)})
    with pytest.raises(UnlearnableError, match="takes only val_images"):
        get_protocol("st-es")(train, test, cfg(epochs=1), seed=1, options={"patience": 2})


def test_every_result_records_the_best_epoch_beside_the_final_one():
    r = TrainResult(test_acc=0.4, train_acc=1.0, history=[{"epoch": 1, "test_acc": 0.5}, {"epoch": 2, "test_acc": 0.7},
                                                           {"epoch": 3, "test_acc": 0.4}])
    m = r.metrics()
    assert (m["test_acc"], m["best_test_acc"], m["best_epoch"]) == (0.4, 0.7, 2)
    assert TrainResult(0.5, 0.5, history=[{"stage": "linear-probe", "test_acc": 0.5}]).best() == {}


def test_cli_pretrain_excludes_the_protected_images_and_train_starts_from_it(capsys, tmp_path):
    x, y = make_learnable(300, size=12, seed=4)
    np.savez(tmp_path / "all.npz", x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
    np.savez(tmp_path / "mine.npz", x_train=x[:60], y_train=y[:60], x_test=x[200:], y_test=y[200:])
    code, _, err = run(capsys, "poison", "--method", "random", "--data", str(tmp_path / "mine.npz"),
                       "--out", str(tmp_path / "prot"))
    assert code == 0, err
    flags = ["--model", "cnn-small", "--epochs", "1", "--batch-size", "64", "--device", "cpu"]
    code, out, err = run(capsys, "pretrain", "--data", str(tmp_path / "all.npz"), "--exclude", str(tmp_path / "prot"),
                         *flags, "--out", str(tmp_path / "prior"))
    assert code == 0, err
    assert json.loads(out)["excluded_images"] == 60 and json.loads(out)["train_images"] == 140
    meta = json.loads((tmp_path / "prior" / "model.json").read_text())
    prov = meta["provenance"]
    assert (prov["images"], prov["excluded_images"], prov["epochs"], prov["protocol"]) == (140, 60, 1, "st")
    assert len(prov["data_fingerprint"]) == 16
    code, out, err = run(capsys, "train", "--data", str(tmp_path / "prot"), "--init", str(tmp_path / "prior"),
                         "--finetune", "linear-probe", *flags, "--out", str(tmp_path / "v"))
    assert code == 0, err
    summary = json.loads(out)
    assert {"best_test_acc", "best_epoch"} <= set(summary)
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert m["prior"]["finetune"] == "linear-probe" and m["prior"]["provenance"] == prov
    assert m["config"]["init"] == str(tmp_path / "prior")


@pytest.mark.parametrize("argv, needle", [
    (["train", "--finetune", "low-lr"], "--finetune and --backbone-lr-scale need --init"),
    (["train", "--init", "no-such-prior"], "--init: no-such-prior: no model.json + model.safetensors found"),
    (["evaluate", "--backbone-lr-scale", "0.5"], "--finetune and --backbone-lr-scale need --init"),
    (["pretrain", "--protocol", "at"], "a prior is pretrained with protocol st or simclr"),
])
def test_cli_prior_errors_are_one_line(capsys, tiny_npz, tmp_path, argv, needle):
    code, _, err = run(capsys, *argv, "--data", str(tiny_npz), "--out", str(tmp_path / "out"))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "out").exists()


def test_cli_train_st_es_reports_where_it_stopped(capsys, tiny_npz, tmp_path):
    code, out, err = run(capsys, "train", "--protocol", "st-es", "--data", str(tiny_npz), "--model", "cnn-small",
                         "--epochs", "2", "--device", "cpu", "--out", str(tmp_path / "v"))
    assert code == 0, err
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert m["protocol"] == "st-es" and m["early_stopping"]["val_images"] == 8  # a tenth of 80 test images
    assert json.loads(out)["stopped_at_epoch"] == m["early_stopping"]["epoch"]


def test_run_spec_victims_take_a_prior_beside_the_config(prior, tmp_path):
    folder, _ = prior
    import shutil
    shutil.copytree(folder, tmp_path / "p")
    base = {"data": "tiny.npz", "attacks": ["random"], "victims": {"v": {"model": "cnn-small",
                                                                        "options": {"init": "p",
                                                                                    "finetune": "low-lr"}}}}
    spec = parse_spec(base, origin="spec.yaml", base_dir=str(tmp_path))
    assert spec.victims["v"].options["init"] == str(tmp_path / "p")
    with pytest.raises(UnlearnableError, match=r"victims.v.options.init: .*no model.json"):
        parse_spec({**base, "victims": {"v": {"model": "cnn-small", "options": {"init": "nope"}}}},
                   origin="spec.yaml", base_dir=str(tmp_path))
    s = parse_spec({**base, "protocols": {"es": {"name": "st-es", "options": {"val_images": 20}}}},
                   origin="spec.yaml", base_dir=str(tmp_path))
    assert s.protocols["es"].name == "st-es"
