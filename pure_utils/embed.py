"""Embedders: turn feature visualisations into vectors whose distances measure semantic similarity.

PURE is evaluated (Dreyer et al. 2024, Eq. 4-5) by embedding the cropped reference samples of
a neuron with a foundation model and measuring distances. One interface serves all of them::

    emb = load_embedder("clip")                  # transformers CLIPVisionModel, ViT-B/32
    vectors = emb.embed(crops)                   # list of Tensor[3, h, w] in [0, 1] -> Tensor[n, 768]

Embedders by name (:func:`load_embedder`):

``"clip"``
    ``openai/clip-vit-base-patch32`` vision tower (transformers), mean of the
    ``last_hidden_state`` tokens (768-d), as in the reference pipeline.
``"open_clip"``
    open_clip ``ViT-B-32`` with its projected image embedding (512-d); ``pretrained_tag``
    selects the weights (default ``"openai"``).
``"dinov2"``
    ``facebook/dinov2-base`` (transformers), mean of the ``last_hidden_state`` tokens (768-d).
``"attributes"``
    On the controlled benchmark: the colours and shapes visible in a crop, weighted by their
    area - a perfect attribute reader in CLIP's role, see
    :class:`pure_utils.shapes.reader.AttributeEmbedder`.

``pretrained=False`` builds the same architectures with small random-initialised
configurations (no download), so tests and the smoke profile run the real code path. The
preprocessing (resize of the shortest side with bicubic interpolation, centre crop, the model's
mean/std) is implemented here, so no image-processor files are needed.
"""
from __future__ import annotations

import abc
from typing import Sequence

import torch
import torch.nn.functional as F

from ._progress import tqdm
from .registry import Registry
from .data import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["Embedder", "ImageEmbedder", "CLIPEmbedder", "OpenCLIPEmbedder", "DINOv2Embedder",
           "load_embedder", "EMBEDDERS", "WEIGHTS", "preprocess"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: The pretrained weights of each foundation model: Hugging Face repository or open_clip model.
WEIGHTS = {
    "clip": "openai/clip-vit-base-patch32",
    "open_clip": "ViT-B-32",
    "dinov2": "facebook/dinov2-base",
}
#: Embedders by name (``EMBEDDERS.register(name, builder)`` adds one; a builder takes the keyword
#: arguments of :func:`load_embedder` and returns an :class:`Embedder`). The attribute reader of
#: the controlled benchmark is named by path: the engine does not import :mod:`pure_utils.shapes`.
EMBEDDERS = Registry("embedder")


def preprocess(image: torch.Tensor, *, resize: int, crop: int, mean, std) -> torch.Tensor:
    """Resize the shortest side (bicubic, antialiased), centre-crop, normalise.

    Parameters
    ----------
    image : Tensor[3, h, w] (or [4, h, w]: RGBA, composited on white) in [0, 1]
    resize : int
        Length of the shortest side after resizing.
    crop : int
        Side of the square centre crop.
    mean, std : tuples of 3 floats

    Returns
    -------
    Tensor[3, crop, crop]
    """
    if image.dim() != 3 or image.shape[0] not in (3, 4):
        raise ValueError(f"an image must be Tensor[3, h, w] in [0, 1], got shape {tuple(image.shape)}")
    img = image.float()
    if img.shape[0] == 4:
        img = img[:3] * img[3:] + (1 - img[3:])
    h, w = img.shape[-2:]
    scale = resize / min(h, w)
    size = (max(crop, round(h * scale)), max(crop, round(w * scale)))
    img = F.interpolate(img.unsqueeze(0), size=size, mode="bicubic", align_corners=False,
                        antialias=True).squeeze(0).clamp(0, 1)
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    img = img[:, top:top + crop, left:left + crop]
    mean = torch.tensor(mean).view(3, 1, 1)
    std = torch.tensor(std).view(3, 1, 1)
    return (img - mean) / std


class Embedder(abc.ABC):
    """Common interface: ``embed(items) -> Tensor[n, dim]``.

    Attributes
    ----------
    name : str
        Registry name (``"clip"``, ``"dinov2"``, ...).
    dim : int
        Embedding size.
    pretrained : bool
        Whether real weights were loaded (False: random-initialised, for tests).
    spec : dict
        The arguments of :func:`load_embedder` that define it (for cache keys).
    input_kind : {"images", "boxes"}
        What :meth:`embed` takes: crops as images, or ``(dataset, index, box)`` triples of the
        controlled benchmark (the attribute embedder, which reads the annotations).
    """

    name: str = "embedder"
    spec: dict = {}
    dim: int = 0
    pretrained: bool = False
    input_kind: str = "images"

    @abc.abstractmethod
    def embed(self, items, *, batch_size: int | None = None, progress: bool = True) -> torch.Tensor:
        """Embed ``items`` -> ``Tensor[n, dim]`` (float32, CPU)."""

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, pretrained={self.pretrained})"


class ImageEmbedder(Embedder):
    """An embedder of images: preprocessing + a batched forward of a vision model.

    Subclasses set ``resize``, ``crop``, ``mean``, ``std`` and implement :meth:`forward`.
    """

    input_kind = "images"

    def __init__(self, model: torch.nn.Module, *, resize: int, crop: int, mean, std,
                 batch_size: int = 32, device=None, name: str = "image", pretrained: bool = False):
        self.device = torch.device(device or "cpu")
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.resize, self.crop, self.mean, self.std = resize, crop, mean, std
        self.batch_size = batch_size
        self.name, self.pretrained = name, pretrained
        with torch.no_grad():
            self.dim = int(self.forward(torch.zeros(1, 3, crop, crop, device=self.device)).shape[1])

    @abc.abstractmethod
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, 3, crop, crop]`` (normalised) -> ``Tensor[b, dim]``."""

    @torch.no_grad()
    def embed(self, items: Sequence[torch.Tensor], *, batch_size: int | None = None,
              progress: bool = True) -> torch.Tensor:
        """Embed images.

        Parameters
        ----------
        items : list of Tensor[3, h, w] (or Tensor[n, 3, h, w]) in [0, 1]
            Images of any size (crops); RGBA display crops are composited on white.
        batch_size : int, optional
            Default: the embedder's ``batch_size``.
        progress : bool
            Show a progress bar.

        Returns
        -------
        Tensor[n, dim]
        """
        items = list(items)
        bs = batch_size or self.batch_size
        out = []
        for s in tqdm(range(0, len(items), bs), desc=f"embed {self.name}", disable=not progress):
            x = torch.stack([preprocess(img, resize=self.resize, crop=self.crop, mean=self.mean,
                                        std=self.std) for img in items[s:s + bs]])
            out.append(self.forward(x.to(self.device)).float().cpu())
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out)


class _TokenMeanEmbedder(ImageEmbedder):
    """transformers vision model; the embedding is the mean of ``last_hidden_state`` tokens."""

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).last_hidden_state.mean(1)


class CLIPEmbedder(_TokenMeanEmbedder):
    """CLIP vision tower (transformers ``CLIPVisionModel``), token mean of the last hidden state."""


class DINOv2Embedder(_TokenMeanEmbedder):
    """DINOv2 (transformers ``Dinov2Model``), token mean of the last hidden state."""


class OpenCLIPEmbedder(ImageEmbedder):
    """open_clip model, projected image embedding (``encode_image``)."""

    def forward(self, pixel_values):
        return self.model.encode_image(pixel_values)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def _missing(name: str, what: str, err: Exception, command: str) -> RuntimeError:
    return RuntimeError(
        f"the weights of embedder {name!r} ({what}) are not available offline: {err}\n"
        f"How to get them: run once on a machine with internet access ({command}); they are then "
        "kept in the Hugging Face cache (~/.cache/huggingface, or $HF_HOME) and HF_HUB_OFFLINE=1 "
        "works. Or choose another embedder: in the profile set `embedder:` / `visual_embedder:` "
        "(e.g. attributes on the controlled benchmark), or `embedder_pretrained: false` / "
        "`visual_embedder_pretrained: false` for a random-initialised model (tests only; its "
        "distances mean nothing semantically).")


def _hf_tiny(cfg_cls, image_size: int, **overrides):
    kwargs = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=max(1, image_size // 4))
    kwargs.update(overrides)
    return cfg_cls(**kwargs)


def load_embedder(name: str, *, pretrained: bool = True, device=None, batch_size: int = 32,
                  image_size: int | None = None, pretrained_tag: str = "openai",
                  config: dict | None = None, **kwargs) -> Embedder:
    """Load an embedder by name.

    Parameters
    ----------
    name : {"clip", "open_clip", "dinov2", "attributes"}
    pretrained : bool
        Load the real weights (Hugging Face cache or internet). ``False``: the same architecture
        with a small random-initialised configuration, built without any download (for tests and
        the smoke profile; its distances carry no semantics).
    device : str or torch.device, optional
        Default ``"cpu"``.
    batch_size : int
        Images per forward pass.
    image_size : int, optional
        Input side of a random-initialised model (default 32; pretrained models use 224).
    pretrained_tag : str
        ``"open_clip"`` only: open_clip weight tag (default ``"openai"``).
    config : dict, optional
        Overrides of the random-initialised configuration (e.g. ``{"hidden_size": 64}``).
    **kwargs
        ``"attributes"``: ``colours`` and ``shapes`` of the dataset (required; see
        :class:`pure_utils.shapes.reader.AttributeEmbedder`).

    Returns
    -------
    Embedder

    Raises
    ------
    ValueError
        Unknown name, or ``colours`` / ``shapes`` missing for ``"attributes"``.
    RuntimeError
        ``pretrained=True`` and the weights cannot be loaded (offline, not cached); the message
        says what is missing, how to download it and which profile key to change.
    """
    build = EMBEDDERS.get(name)
    emb = build(name=name, pretrained=pretrained, device=device, batch_size=batch_size,
                image_size=image_size, pretrained_tag=pretrained_tag, config=config, **kwargs)
    # what identifies the embedding function (used in cache keys)
    emb.spec = dict(name=name, pretrained=bool(pretrained), image_size=image_size,
                    config=dict(config or {}), kwargs=dict(kwargs),
                    pretrained_tag=pretrained_tag if name == "open_clip" else None)
    return emb


def _no_extra(name, kwargs) -> None:
    if kwargs:
        raise ValueError(f"unexpected arguments for embedder {name!r}: {', '.join(kwargs)}")


@EMBEDDERS.register("dinov2")
@EMBEDDERS.register("clip")  # the lower decorator registers first: clip is listed first
def _load_transformers(*, name, pretrained, device, batch_size, image_size, pretrained_tag,
                       config, **kwargs) -> Embedder:
    """CLIP or DINOv2 through transformers (tiny random configurations when not pretrained)."""
    _no_extra(name, kwargs)
    config = dict(config or {})
    common = dict(batch_size=batch_size, device=device, name=name, pretrained=pretrained)
    # heavy (several seconds): loaded only when a CLIP or DINOv2 embedder is built
    from transformers import CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model

    is_clip = name == "clip"
    model_cls = CLIPVisionModel if is_clip else Dinov2Model
    cls = CLIPEmbedder if is_clip else DINOv2Embedder
    mean, std = (CLIP_MEAN, CLIP_STD) if is_clip else (IMAGENET_MEAN, IMAGENET_STD)
    if pretrained:
        repo = WEIGHTS[name]
        try:
            model = model_cls.from_pretrained(repo)
        except (OSError, ValueError) as err:
            raise _missing(name, repo, err, f"huggingface-cli download {repo}") from err
        # CLIP: 224 shortest side then 224 crop; DINOv2's processor: 256 then 224 crop
        resize = 224 if is_clip else 256
        return cls(model, resize=resize, crop=224, mean=mean, std=std, **common)
    size = image_size or 32
    cfg = _hf_tiny(CLIPVisionConfig if is_clip else Dinov2Config, size, **config)
    # the random weights are the same on every call; the global RNG is left untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_cls(cfg)
    return cls(model, resize=size, crop=size, mean=mean, std=std, **common)


@EMBEDDERS.register("open_clip")
def _load_open_clip(*, name, pretrained, device, batch_size, image_size, pretrained_tag,
                    config, **kwargs) -> Embedder:
    """open_clip's ViT-B-32 (a tiny random CLIP when not pretrained)."""
    _no_extra(name, kwargs)
    config = dict(config or {})
    common = dict(batch_size=batch_size, device=device, name=name, pretrained=pretrained)
    import open_clip  # heavy and optional: loaded only for the open_clip embedder

    if pretrained:
        try:
            model = open_clip.create_model(WEIGHTS[name], pretrained=pretrained_tag)
        except (RuntimeError, OSError, ValueError) as err:
            raise _missing(name, f"open_clip {WEIGHTS[name]} / {pretrained_tag}", err,
                           "python -c \"import open_clip; open_clip.create_model('ViT-B-32', "
                           f"pretrained='{pretrained_tag}')\"") from err
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        return OpenCLIPEmbedder(model, resize=size, crop=size, mean=CLIP_MEAN, std=CLIP_STD,
                                **common)
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg  # heavy, as above

    size = image_size or 32
    vision = dict(layers=2, width=32, head_width=16, patch_size=max(1, size // 4), image_size=size)
    vision.update(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(**vision),
                     text_cfg=CLIPTextCfg(context_length=8, vocab_size=64, width=16, heads=2,
                                          layers=1))
    return OpenCLIPEmbedder(model, resize=size, crop=size, mean=CLIP_MEAN, std=CLIP_STD, **common)


EMBEDDERS.register("attributes", "pure_utils.shapes.reader:load_attribute_reader")
