"""ProFD model on the tiny CLIP (CPU, random init): shapes, gradients, switches, caching, policy, adapter."""
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from profd_plugin.config import get_default_config
from profd_plugin.data.masks import part_names
from profd_plugin.losses import ProFDCriterion, ProFDTargets
from profd_plugin.modeling import (
    ProFD,
    ProFDEmbeddings,
    ProFDOutput,
    build_profd_model,
    create_clip,
    profd_torchreid_factory,
)
from profd_plugin.modeling.clip_backbone import TINY_CLIP_CONFIG
from profd_plugin.modeling.decoder import HybridAttentionDecoder, HybridAttentionLayer
from profd_plugin.modeling.heads import visibility_scores
from profd_plugin.modeling.targets import patch_labels, weighted_average_pooling

N, C = 8, 4
PARTS = part_names("five_v")
K, D = len(PARTS), TINY_CLIP_CONFIG["embed_dim"]
TEXT_WIDTH = TINY_CLIP_CONFIG["text_cfg"]["width"]  # width of the prompt context tokens
SMALL = dict(image_size=(128, 64))  # 8x4 grid: fast
TOKENIZER = SimpleTokenizer(context_length=77)


def make_model(seed: int = 0, **kwargs) -> ProFD:
    torch.manual_seed(seed)
    options = dict(SMALL, tokenizer=TOKENIZER)
    options.update(kwargs)
    return ProFD(create_clip("tiny"), C, part_names=PARTS, **options)


def batch(image_size=(128, 64), seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(N, 3, *image_size, generator=gen)
    mask_size = (image_size[0] // 4, image_size[1] // 4)
    masks = torch.softmax(3 * torch.randn(N, K + 1, *mask_size, generator=gen), dim=1)
    pids = torch.arange(C).repeat_interleave(N // C)
    return images, masks, pids, torch.rand(N, K + 1, generator=gen) > 0.3


def train_step(model: ProFD, criterion: ProFDCriterion = None, image_size=(128, 64)):
    images, masks, pids, vis = batch(image_size)
    model.train()
    out = model(images, masks)
    criterion = criterion or ProFDCriterion()
    targets = ProFDTargets(pids=pids, masks=masks, visibility=vis, patch_labels=model.patch_labels(masks))
    losses = {**criterion(out, targets), **model.memory.losses(out.global_bn, out.concat_bn, pids)}
    sum(losses.values()).backward()
    return out, losses


def test_train_output_shapes():
    model = make_model()
    out, losses = train_step(model)
    assert isinstance(out, ProFDOutput)
    assert out.global_feat.shape == out.global_bn.shape == (N, D)
    assert out.global_logits.shape == out.concat_logits.shape == (N, C)
    assert out.part_feats.shape == (N, K, D) and out.concat_bn.shape == (N, K * D)
    assert out.visibility_logits.shape == (N, K)
    assert out.spa_attention.shape == (N, K + 2, 8 * 4)
    assert out.alignment_scores.shape == (N, K + 1, 8, 4)
    masks = batch()[1]
    expected = patch_labels(masks, grid_size=(8, 4), image_size=(128, 64), patch_size=16, stride=16,
                            label_scale=64.0)
    assert torch.equal(model.patch_labels(masks), expected)  # the backbone's geometry and M_p's scale
    assert len(losses) == 10 and all(torch.isfinite(v) for v in losses.values())


def test_eval_embeddings_shapes():
    model = make_model().eval()
    with torch.no_grad():
        emb = model(batch()[0], return_attention=True)
        plain = model(batch()[0])
    assert isinstance(emb, ProFDEmbeddings)
    assert emb.global_feat.shape == (N, D) and emb.part_feats.shape == (N, K, D)
    assert emb.visibility.shape == (N, K)
    assert emb.attention.shape == (N, K + 2, 32) and plain.attention is None
    assert torch.allclose(emb.attention.sum(-1), torch.ones(N, K + 2), atol=1e-5)  # exact maps in eval
    assert ((emb.visibility == 0) | (emb.visibility >= 0.1)).all()


@pytest.mark.parametrize("train_text_encoder", [True, False])
def test_gradients_reach_trainable_and_not_frozen(train_text_encoder):
    model = make_model(train_text_encoder=train_text_encoder)
    train_step(model)
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, name
            assert torch.isfinite(param.grad).all(), name
        else:
            assert param.grad is None, name
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {"bnneck_global.bn.bias", "bnneck_concat.bn.bias"} <= frozen
    text = {n for n in dict(model.named_parameters()) if n.startswith("prompt_learner.text_encoder.")}
    assert (text <= frozen) == (not train_text_encoder)
    assert model.prompt_learner.ctx.grad is not None
    assert "prompt_learner.background" in dict(model.named_buffers())


def test_prompt_features_cached_in_eval(monkeypatch):
    model = make_model().eval()
    learner = model.prompt_learner
    calls = []
    original = learner.encode_prompts
    monkeypatch.setattr(learner, "encode_prompts", lambda: calls.append(1) or original())
    images = batch()[0]
    with torch.no_grad():
        first = model(images).part_feats
        model(images)
        assert len(calls) == 1
        learner.ctx.add_(0.5)  # in-place change (optimizer step / load_state_dict) invalidates
        changed = model(images).part_feats
        assert len(calls) == 2 and not torch.allclose(first, changed)
    model.train()
    model(images)
    model(images)
    assert len(calls) == 4  # no caching in train mode


@pytest.mark.parametrize("mode", ["sea", "spa", "none"])
def test_attention_ablations_change_the_computation(mode):
    hybrid = make_model().eval()
    ablated = make_model(attention=mode).eval()
    missing, _ = ablated.load_state_dict(hybrid.state_dict(), strict=False)
    assert not missing  # the ablation is a strict subset of the hybrid model
    names = [n for n, _ in ablated.named_parameters()]
    if mode == "sea":
        assert not any("spa" in n for n in names)
    if mode == "spa":
        assert not any("sea_attn" in n for n in names)
    if mode == "none":
        assert ablated.decoder is None
    images, masks, _, _ = batch()
    with torch.no_grad():
        assert not torch.allclose(hybrid(images).part_feats, ablated(images).part_feats)
    out, _ = train_step(ablated, ProFDCriterion(attention=0.0 if mode != "spa" else 1.0))
    assert (out.spa_attention is None) == (mode != "spa")


def test_none_mode_pools_with_masks_when_given():
    model = make_model(attention="none").eval()
    images, masks, _, _ = batch()
    with torch.no_grad():
        assert not torch.allclose(model(images).part_feats, model(images, masks).part_feats)


def test_prompt_switches():
    shared = make_model(class_specific_ctx=False, n_ctx=4, foreground_word="", learnable_background=True)
    assert shared.prompt_learner.ctx.shape == (4, TEXT_WIDTH)
    assert shared.prompt_learner.num_queries == K + 1
    assert "prompt_learner.background" in dict(shared.named_parameters())
    out, losses = train_step(shared)
    assert out.spa_attention.shape[1] == K + 1 and torch.isfinite(losses["loss_attention"])
    assert shared.prompt_learner.background.grad is not None
    assert make_model().prompt_learner.ctx.shape == (K + 1, 16, TEXT_WIDTH)


def test_visibility_modes():
    logits = torch.tensor([[3.0, 0.0, -3.0, 1.0, 2.0]])
    official = visibility_scores(logits, mode="softmax", temperature=0.1, threshold=0.1)
    ref = torch.softmax(torch.sigmoid(logits) / 0.1, dim=-1)
    assert torch.allclose(official, ref.masked_fill(ref < 0.1, 0.0))
    paper = visibility_scores(logits, mode="sigmoid", temperature=0.1, threshold=0.1)
    assert torch.allclose(paper, torch.sigmoid(logits).masked_fill(torch.sigmoid(logits) < 0.1, 0.0))
    images = batch()[0]
    with torch.no_grad():
        v_paper = make_model(visibility_mode="sigmoid").eval()(images).visibility
        v_official = make_model().eval()(images).visibility
    assert not torch.allclose(v_paper, v_official)


def test_stride12_full_resolution():
    model = make_model(image_size=(256, 128), stride=12)
    assert model.grid_size == (21, 10)
    out, losses = train_step(model, image_size=(256, 128))
    assert out.alignment_scores.shape == (N, K + 1, 21, 10)
    assert out.spa_attention.shape == (N, K + 2, 210)
    assert all(torch.isfinite(v) for v in losses.values())


def test_pooled_part_features_for_memory_init():
    model = make_model(patch_label_scale=8.0).train()
    images, masks, pids, _ = batch()
    labels = model.patch_labels(masks)  # what the criterion gets
    assert torch.allclose(labels, torch.softmax(8.0 * torch.nn.functional.avg_pool2d(masks, 4), dim=1))
    model(images)  # a train forward (updates BN statistics) before the init pass
    global_bn, concat_bn = model.pooled_part_features(images, masks)
    assert global_bn.shape == (N, D) and concat_bn.shape == (N, K * D) and model.training
    # The init pass pools with the same M_p the criterion gets through the train output.
    model.eval()
    with torch.no_grad():
        _, patches = model.backbone(images)  # (N, L, D)
        ref = model.bnneck_concat(weighted_average_pooling(patches, labels[:, 1:]).flatten(1))
    model.train()
    assert torch.allclose(concat_bn, ref, atol=1e-5)
    model.memory.initialize([(global_bn, concat_bn, pids)])
    assert model.memory.initialized


@pytest.mark.parametrize("no_decay", [True, False])
def test_param_groups_cover_trainable_params_once(no_decay):
    model = make_model(train_text_encoder=False, learnable_background=True)
    groups = model.param_groups(1e-3, 5e-4, backbone_lr_mult=0.1, no_decay_bias_norm=no_decay)
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(seen) == len(set(seen)) and set(seen) == trainable
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = model.no_weight_decay()
    embeddings = {"prompt_learner.ctx", "prompt_learner.background", "backbone.visual.positional_embedding"}
    assert embeddings <= exempt
    for group in groups:
        backbone = group["name"].startswith("backbone")
        assert group["lr"] == pytest.approx(1e-4 if backbone else 1e-3)
        for param in group["params"]:
            assert names[id(param)].startswith("backbone.") == backbone
            decayed = not (no_decay and names[id(param)] in exempt)
            assert group["weight_decay"] == (5e-4 if decayed else 0.0)
    assert len(groups) == (4 if no_decay else 2)


def test_full_size_inference_params_about_100m():
    cfg = get_default_config()
    cfg.profd.clip.pretrained = "none"
    model = build_profd_model(cfg, num_classes=702)
    assert model.grid_size == (16, 8)
    assert 99e6 < model.num_inference_params() < 101e6  # official: 86.1M visual + 13.9M decoder


def test_torchreid_factory_adapter():
    opts = ["profd.clip.name", "tiny", "data.height", "128", "data.width", "64"]
    model = profd_torchreid_factory(C, loss="triplet", pretrained=False, opts=opts)
    images = batch()[0]
    model.eval()
    with torch.no_grad():
        feats = model(images)
    assert feats.shape == (N, (K + 1) * D)
    assert torch.allclose(feats[:, :D].norm(dim=1), torch.ones(N), atol=1e-5)
    model.train()
    logits, global_feat = model(images)
    assert logits.shape == (N, C) and global_feat.shape == (N, D)
    model.loss = "softmax"
    assert model(images).shape == (N, C)


def official_layer(layer: HybridAttentionLayer, q: torch.Tensor, mem: torch.Tensor):
    """Steps 1-7 of one decoder layer written out by hand (official section 1.4), eval mode (no dropout)."""
    keys = layer.reverse_norm(mem + layer.reverse_attn(mem, q, q)[0])  # E'_pat from the original q
    sea = layer.sea_attn(q, mem, mem)[0]
    spa, attn = layer.spa_attn(layer.spa_proj(q), mem, mem)
    x = layer.hybrid_norm(q + sea + spa)
    x = x + layer.cross_attn(x, keys, keys)[0]
    return layer.out_norm(x + layer.ffn(layer.ffn_norm(x))), attn, keys


def test_decoder_layer_follows_official_order():
    torch.manual_seed(0)
    layer = HybridAttentionLayer(16, 2, dropout=0.1, ffn_ratio=4).eval()
    q, mem = torch.randn(2, 4, 16), torch.randn(2, 10, 16)
    with torch.no_grad():
        x, attn, _ = official_layer(layer, q, mem)
        out, got_attn = layer(q, mem)
    assert torch.allclose(out, x, atol=1e-6) and torch.allclose(got_attn, attn)
    layer.train()  # nn.MultiheadAttention returns the weights after dropout in train mode (official too)
    assert (layer(q, mem)[1] == 0).any()


def test_decoder_layers_all_read_the_same_projected_memory():
    torch.manual_seed(0)
    decoder = HybridAttentionDecoder(16, num_layers=2, num_heads=2, dropout=0.1, ffn_ratio=4).eval()
    with torch.no_grad():  # unit-gain weights: with the 0.02-std init every branch barely moves the tokens
        for weight in (p for p in decoder.parameters() if p.dim() == 2):
            torch.nn.init.normal_(weight, std=16 ** -0.5)
    prompts, patches = torch.randn(5, 16), torch.randn(3, 10, 16)  # (Q, D) shared prompts, (N, L, D)
    with torch.no_grad():
        mem = decoder.memory_proj(patches)  # projected once, never updated (official section 1.4)
        x = decoder.query_proj(prompts).expand(3, -1, -1)  # (N, Q, D)
        x, attn1, keys1 = official_layer(decoder.layers[0], x, mem)
        x2, attn2, _ = official_layer(decoder.layers[1], x, mem)
        tokens, spa = decoder(prompts, patches)
        expected = decoder.out_proj(x2)  # (N, Q, D)
        chained, _, _ = official_layer(decoder.layers[1], x, keys1)  # a decoder that updated the memory
        assert torch.allclose(tokens, expected, atol=1e-5)
        assert torch.allclose(spa, (attn1 + attn2) / 2, atol=1e-6)  # SPA map averaged over the layers
        assert not torch.allclose(decoder.out_proj(chained), tokens, atol=1e-2)  # the check tells them apart
