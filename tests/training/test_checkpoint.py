import torch

from jointreg.training.checkpoint import join_tensors, load_checkpoint, save_checkpoint, split_tensors


def test_split_and_join_preserve_structure_and_key_types():
    state = {"a": torch.arange(3), "b": {0: torch.ones(2), 5: {"step": torch.tensor(3.0)}},
             "c": (1, "x", None), "d": [torch.zeros(1), 2.5]}
    tensors = {}
    skeleton = split_tensors(state, "s", tensors)
    back = join_tensors(skeleton, tensors)
    assert set(back["b"]) == {0, 5}
    assert back["c"] == (1, "x", None)
    assert torch.equal(back["b"][5]["step"], torch.tensor(3.0))


def test_optimizer_state_survives_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    save_checkpoint(tmp_path / "ck", {"model": model.state_dict(), "opt": opt.state_dict()})
    back = load_checkpoint(tmp_path / "ck")
    model2 = torch.nn.Linear(4, 2)
    model2.load_state_dict(back["model"])
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(back["opt"])
    x = torch.randn(8, 4)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    assert torch.equal(model.weight, model2.weight)
