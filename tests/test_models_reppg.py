import numpy as np
import pytest
import torch

from lofr.data.schemas import COCO17, CROWDPOSE14, MPII16
from lofr.models.reppg import RePPG, SemGraphConv, batch_edge_index

SCHEMAS = [COCO17, MPII16, CROWDPOSE14]


def dense_semgcn(layer: SemGraphConv, x: torch.Tensor) -> torch.Tensor:
    """Eq. 10 with dense matrices: Â = row-softmax of M_r on A's non-zeros (-inf elsewhere),
    out = (Â ⊙ I) x W0 + (Â ⊙ (1 - I)) x W1 + b."""
    c = layer.num_nodes
    logits = torch.full((c, c), float("-inf"))
    src, dst = layer.edge_index
    for e in range(src.numel()):  # Â[i, j] weighs the message j -> i
        logits[dst[e], src[e]] = layer.edge_logit[e]
    a_hat = logits.softmax(dim=-1)  # (C, C)
    eye = torch.eye(c)
    return (a_hat * eye) @ layer.lin_self(x) + (a_hat * (1 - eye)) @ layer.lin_neigh(x) + layer.bias


def test_semgcn_hand_computed_chain():
    # chain 0 - 1 - 2 with self loops, scalar features, W0 = 2, W1 = 1, equal relations M_r:
    # Â rows = [1/2, 1/2, 0], [1/3, 1/3, 1/3], [0, 1/2, 1/2]; x = (1, 2, 4)
    # out_0 = 1/2 * 2*1 + 1/2 * 2        = 2
    # out_1 = 1/3 * 1 + 1/3 * 2*2 + 1/3 * 4 = 3
    # out_2 = 1/2 * 2 + 1/2 * 2*4        = 5
    edge_index = np.array([[0, 1, 1, 2, 0, 1, 2], [1, 0, 2, 1, 0, 1, 2]])
    layer = SemGraphConv(1, 1, edge_index)
    with torch.no_grad():
        layer.lin_self.weight.fill_(2.0)
        layer.lin_neigh.weight.fill_(1.0)
    out = layer(torch.tensor([[[1.0], [2.0], [4.0]]]))
    assert torch.allclose(out.flatten(), torch.tensor([2.0, 3.0, 5.0]))
    expected = torch.tensor([[1 / 2, 1 / 2, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 2, 1 / 2]])
    assert torch.allclose(layer.relation_matrix(), expected)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.name)
def test_semgcn_matches_dense_reference(schema):
    torch.manual_seed(0)
    layer = SemGraphConv(8, 5, schema)
    with torch.no_grad():  # non-uniform, asymmetric relations so that edge direction matters
        layer.edge_logit.normal_()
        layer.bias.normal_()
    x = torch.randn(3, schema.num_keypoints, 8)
    assert torch.allclose(layer(x), dense_semgcn(layer, x), atol=1e-5)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.name)
def test_relation_matrix_is_row_normalised_adjacency_at_init(schema):
    layer = SemGraphConv(4, 4, schema)
    adj = torch.tensor(schema.adjacency(self_loops=True))
    rel = layer.relation_matrix()
    assert rel.shape == (schema.num_keypoints,) * 2
    assert torch.allclose(rel, adj / adj.sum(-1, keepdim=True))
    with torch.no_grad():
        layer.edge_logit.normal_()
    rel = layer.relation_matrix()
    assert torch.allclose(rel.sum(-1), torch.ones(schema.num_keypoints))
    assert torch.all(rel[adj == 0] == 0) and torch.all(rel[adj == 1] > 0)


def test_batch_is_disjoint_graphs():
    torch.manual_seed(0)
    ei = torch.tensor([[0, 1], [1, 0]])
    assert batch_edge_index(ei, 3, 2).tolist() == [[0, 1, 2, 3, 4, 5], [1, 0, 3, 2, 5, 4]]
    layer = SemGraphConv(6, 6, COCO17)
    x = torch.randn(4, 17, 6)
    out = layer(x)
    for b in range(4):  # each sample alone gives the same result: no message crosses samples
        assert torch.allclose(out[b], layer(x[b:b + 1])[0], atol=1e-6)


def test_semgcn_gradients_reach_every_parameter():
    layer = SemGraphConv(4, 4, MPII16)
    with torch.no_grad():
        layer.edge_logit.normal_()
    x = torch.randn(2, 16, 4, requires_grad=True)
    (layer(x) * torch.randn(2, 16, 4)).sum().backward()
    for name, p in list(layer.named_parameters()) + [("x", x)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.name)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_reppg_shapes_and_gradients(schema, num_layers):
    torch.manual_seed(0)
    c = schema.num_keypoints
    model = RePPG(schema, dim=16, num_layers=num_layers, in_dim=12)
    protos = torch.randn(2, c, 12, requires_grad=True)
    out = model(protos)
    assert out.shape == (2, c, 16)
    assert model.relation_matrices().shape == (num_layers, c, c)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():  # M_r (edge_logit) too, although uniform at init
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert protos.grad.abs().sum() > 0


def test_reppg_mixes_along_the_skeleton_only():
    # one GCN layer, no residual: a change at joint 0 (nose) reaches only its graph neighbours
    torch.manual_seed(0)
    model = RePPG(COCO17, dim=8, num_layers=1, residual=False)
    x = torch.randn(1, 17, 8)
    y = x.clone()
    y[0, 0] += 1.0
    changed = (model(x) - model(y)).abs().sum(-1)[0] > 1e-6  # (C,)
    neighbours = torch.tensor(COCO17.adjacency()[0] > 0)
    assert torch.equal(changed, neighbours)


def test_bad_inputs_raise():
    layer = SemGraphConv(4, 4, COCO17)
    with pytest.raises(ValueError, match="17 keypoints got 16"):
        layer(torch.randn(1, 16, 4))
    with pytest.raises(ValueError, match="outside"):
        SemGraphConv(4, 4, np.array([[0, 5], [5, 0]]), num_nodes=3)
    with pytest.raises(ValueError, match="duplicate"):
        SemGraphConv(4, 4, np.array([[0, 0], [1, 1]]))
    with pytest.raises(ValueError, match=r"\(2, E\)"):
        SemGraphConv(4, 4, np.zeros((3, 4), dtype=int))
    with pytest.raises(ValueError, match="num_layers"):
        RePPG(COCO17, dim=4, num_layers=0)
