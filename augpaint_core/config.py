"""One pydantic schema for every stage, loaded from YAML presets.

Invalid values fail at load time with the dotted field name, e.g.
``configs/x.yaml: inpaint.num_inference_steps: Input should be greater than 0``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from .errors import AugPaintError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PhantomConfig(_Strict):
    """Built-in cardiac-MRI-like phantom (the demo's and the tests' data)."""

    num_cases: PositiveInt = 20
    slices_per_case: PositiveInt = 10
    size: PositiveInt = 96
    vessels: int = Field(0, ge=0, le=4, description="great vessels per patient, at most: bright pools in a dark "
                                                    "wall outside the heart, labeled background (hard negatives "
                                                    "that vary between patients); 0 = the original phantom")


FORMATS = ("auto", "nnunet", "acdc", "msd", "synapse", "isic")


class DataConfig(_Strict):
    """Raw data and how it becomes a slice dataset (see ``augpaint_core.ingest``)."""

    format: Literal["auto", "nnunet", "acdc", "msd", "synapse", "isic"] = Field(
        "auto", description="raw layout of data.path / --in; auto detects it")
    path: str | None = Field(None, description="raw dataset folder or s3:// prefix; unset uses the built-in phantom")
    image_size: PositiveInt = 256
    split: tuple[float, float, float] = Field(
        (0.7, 0.15, 0.15), description="train:val:test by patient; with an official test set (ISIC) the test "
                                       "fraction is ignored")
    split_seed: int | None = Field(None, ge=0, le=2**32 - 1,
                                   description="seed of the patient split and the labeled pick (default: seed)")
    num_labeled: PositiveInt = Field(1, description="labeled training cases (patients; images for 2D data)")
    channels: list[str] | None = Field(None, description="channel names to use, up to 3 (default: FLAIR for "
                                                         "BraTS, else the first 3)")
    ct_window: tuple[float, float] = (-125.0, 275.0)
    mri_percentiles: tuple[float, float] = (0.5, 99.5)
    shard_size: PositiveInt = Field(512, description="slices per dataset shard")
    workers: int = Field(0, ge=0, description="preprocess processes; 0 = one per CPU core (at most 8)")
    official_test_images: bool = Field(
        False, description="use the dataset's official unlabeled test images (nnU-Net imagesTs, MSD test, Synapse "
                           "Testing, ISIC Test_Input) as unlabeled generator training data; off as in the paper, "
                           "which trains solely on the training set")
    on_error: Literal["fail", "skip"] = Field("fail", description="a bad case stops the run, or is skipped and "
                                                                  "reported")
    phantom: PhantomConfig = PhantomConfig()

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.image_size % 4:
            raise ValueError(f"image_size {self.image_size} must be divisible by the AE factor 4")
        if any(f < 0 for f in self.split) or self.split[0] <= 0 or self.split[1] <= 0:
            raise ValueError(f"data.split {list(self.split)}: train and val fractions must be > 0, test >= 0")
        if self.ct_window[1] <= self.ct_window[0]:
            raise ValueError(f"data.ct_window {list(self.ct_window)} must be [low, high] with low < high")
        lo, hi = self.mri_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"data.mri_percentiles {[lo, hi]} must satisfy 0 <= low < high <= 100")
        if self.channels is not None and not 1 <= len(self.channels) <= 3:
            raise ValueError("data.channels: give 1 to 3 channel names")
        return self


class AEConfig(_Strict):
    """VQ-regularised autoencoder (diffusers VQModel); len(block_channels)=3 gives f=4."""

    block_channels: list[PositiveInt] = [128, 256, 512]
    layers_per_block: PositiveInt = 2
    latent_channels: PositiveInt = 3
    num_embeddings: PositiveInt = 8192
    epochs: PositiveInt = 1000
    max_steps: PositiveInt | None = None
    batch_size: PositiveInt = 4
    lr: PositiveFloat = 4.5e-6 * 4
    commitment_weight: PositiveFloat = 1.0
    disc_weight: float = Field(0.0, ge=0.0, description="patch-discriminator loss weight (0 = no discriminator); "
                                                          "scaled adaptively as in LDM/taming")
    disc_start: int = Field(0, ge=0, description="step at which the discriminator loss starts")

    @model_validator(mode="after")
    def _check(self) -> "AEConfig":
        if len(self.block_channels) != 3:
            raise ValueError("ae.block_channels must have 3 entries (f=4)")
        return self


class LDMConfig(_Strict):
    block_channels: list[PositiveInt] = [224, 448, 672, 896]
    attention: list[bool] = [False, True, True, True]
    layers_per_block: PositiveInt = 2
    num_train_timesteps: PositiveInt = 1000
    beta_start: PositiveFloat = 0.0015
    beta_end: PositiveFloat = 0.0195
    epochs: PositiveInt = 1000
    max_steps: PositiveInt | None = None
    batch_size: PositiveInt = 4
    lr: PositiveFloat = 1e-4
    ema_decay: float = Field(0.9999, ge=0.0, lt=1.0, description="EMA of the U-Net weights (0 disables)")
    conditional: bool = Field(False, description="cond AugPaint: the masked-image latent is concatenated with z_t "
                                                 "(2x latent channels in); trained with random box/irregular masks")
    hflip: bool = Field(False, description="train on horizontally mirrored images too; off as in the paper "
                                           "(section 4.4: no flipping), since mirrored anatomy is wrong anatomy")

    @model_validator(mode="after")
    def _check(self) -> "LDMConfig":
        if len(self.attention) != len(self.block_channels):
            raise ValueError("ldm.attention needs one entry per ldm.block_channels entry")
        if self.beta_end <= self.beta_start:
            raise ValueError("ldm.beta_end must be larger than ldm.beta_start")
        return self


class TrainingConfig(_Strict):
    """How train-ae and train-ldm run: precision, accumulation, checkpoints (accelerate)."""

    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 on a GPU that supports it, else fp32")
    grad_accum: PositiveInt = Field(1, description="micro-batches per optimizer step")
    channels_last: bool = False
    compile: bool = Field(False, description="torch.compile the model (GPU)")
    checkpoint_every: int = Field(0, ge=0, description="optimizer steps between checkpoints (0 = none)")
    checkpoint_dir: str | None = Field(None, description="local folder or s3:// prefix for checkpoints; default "
                                                         "<out>.checkpoints beside the output")
    keep_checkpoints: PositiveInt = 2
    resume: bool = Field(True, description="continue from the latest checkpoint in checkpoint_dir")
    log_every: int = Field(0, ge=0, description="steps between logged losses (0 = 50 points per run)")
    sample_every: int = Field(0, ge=0, description="LDM: steps between sample grids in MLflow (0 = at the end)")


class InpaintConfig(_Strict):
    """Inpaint stage: which sampler, which kept region, and how the batch runs."""

    sampler: Literal["ddim", "dpmsolver++", "unipc", "repaint"] = Field(
        "ddim", description="latent AugPaint with DDIM (the paper), DPM-Solver++ or UniPC; or the pixel-space "
                            "RePaint baseline (needs a train-pixel model instead of AE + LDM)")
    num_inference_steps: PositiveInt = 50
    samples_per_pair: PositiveInt = 5
    eta: float = Field(1.0, ge=0.0, le=1.0, description="DDIM eta; 1 = the paper's stochastic DDIM (Algorithm 1's "
                                                        "tau_t), 0 = deterministic")
    known_noise: Literal["fresh", "fixed"] = Field(
        "fresh", description="noise of the known region: a fresh draw every step (Algorithm 1) or one fixed draw")
    mask: Literal["box", "label"] = Field(
        "box", description="kept region: union of per-class bounding boxes (the paper), or the label shape "
                           "(ablation, paper Table 6); both rounded outward to the AE's 4x4 latent grid")
    box_margin: int = Field(0, ge=0, description="pixels added around the kept region before rounding")
    big_box: Literal["label", "skip", "keep"] = Field(
        "label", description="a source whose kept box covers more than big_box_fraction of the image: keep only "
                             "the label shape (grown by box_margin) instead, skip the source with a warning, or "
                             "keep the box anyway (the paper)")
    big_box_fraction: float = Field(0.5, gt=0.0, le=1.0, description="kept-box area, as a fraction of the image, "
                                                                      "above which big_box applies")
    match_noise: bool = Field(False, description="add white noise to the generated pixels until their fine-scale "
                                                 "noise matches the source scan's (a small AE decodes smooth "
                                                 "images; off in the paper)")
    mask_flip: bool = Field(False, description="randomly flip image+label vertically or horizontally before "
                                               "inpainting (paper section 4.4; on for BraTS)")
    repaint_jump_length: PositiveInt = Field(10, description="RePaint: steps jumped back per resampling")
    repaint_resample: PositiveInt = Field(5, description="RePaint: resamplings per jump point (jump_n_sample)")
    repaint_eta: float = Field(1.0, ge=0.0, le=1.0, description="RePaint: 1 = DDPM noise as in the RePaint paper")
    batch_size: PositiveInt = 8
    num_shards: PositiveInt = Field(1, description="parallel inpaint tasks (GPUs) the pipeline fans out to")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 autocast on a GPU that "
                                                                           "has it, else fp32")
    compile: bool = Field(False, description="torch.compile the U-Net (GPU only)")
    batch_invariant: bool = Field(True, description="on CPU, use kernels whose per-item result does not depend "
                                                    "on the batch size (bitwise reproducible for any batch size)")

    @model_validator(mode="after")
    def _check(self) -> "InpaintConfig":
        if self.sampler == "repaint" and self.repaint_jump_length >= self.num_inference_steps:
            raise ValueError(f"inpaint.repaint_jump_length {self.repaint_jump_length} must be smaller than "
                             f"inpaint.num_inference_steps {self.num_inference_steps}")
        return self


class PixelDMConfig(_Strict):
    """The pixel-space U-Net of the RePaint baseline; it trains with the ldm section's recipe (schedule,
    optimiser, steps, EMA), so only the architecture differs. The default is the paper preset's latent
    U-Net with two more stages of its first width in front (256 and 128 px), so both reach the same
    8 px bottleneck and attend at 32/16/8 px."""

    block_channels: list[PositiveInt] = [224, 224, 224, 448, 672, 896]
    attention: list[bool] = [False, False, False, True, True, True]
    layers_per_block: PositiveInt = 2

    @model_validator(mode="after")
    def _check(self) -> "PixelDMConfig":
        if len(self.attention) != len(self.block_channels):
            raise ValueError("pixel.attention needs one entry per pixel.block_channels entry")
        return self


class AugmentConfig(_Strict):
    """On-the-fly augmentation of segmenter training batches (``augpaint_core.segmentation.onthefly``).

    Defaults are nnU-Net's 2D recipe: each transform fires per image with its probability ``p_*``."""

    enabled: bool = Field(False, description="augment every training batch on its device")
    p_rotation: float = Field(0.2, ge=0.0, le=1.0)
    rotation_deg: float = Field(180.0, ge=0.0, le=180.0, description="rotation uniform in [-deg, deg]")
    p_scale: float = Field(0.2, ge=0.0, le=1.0)
    scale: tuple[PositiveFloat, PositiveFloat] = Field((0.7, 1.4), description="zoom range (> 1 enlarges)")
    p_flip: float = Field(0.5, ge=0.0, le=1.0, description="mirroring, per axis")
    elastic: bool = Field(False, description="elastic deformation (off in nnU-Net v2)")
    p_elastic: float = Field(0.2, ge=0.0, le=1.0)
    elastic_magnitude: float = Field(0.03, ge=0.0, description="displacement std as a fraction of the image size")
    elastic_grid: int = Field(4, ge=2, description="control points per side of the smooth displacement field")
    p_noise: float = Field(0.1, ge=0.0, le=1.0)
    noise_std: float = Field(0.05, ge=0.0, description="Gaussian noise std, uniform in [0, this], on [0, 1]")
    p_blur: float = Field(0.2, ge=0.0, le=1.0)
    blur_sigma: tuple[PositiveFloat, PositiveFloat] = (0.5, 1.0)
    p_brightness: float = Field(0.15, ge=0.0, le=1.0)
    brightness: tuple[PositiveFloat, PositiveFloat] = Field((0.75, 1.25), description="multiplicative")
    p_contrast: float = Field(0.15, ge=0.0, le=1.0)
    contrast: tuple[PositiveFloat, PositiveFloat] = (0.75, 1.25)
    p_gamma: float = Field(0.3, ge=0.0, le=1.0)
    gamma: tuple[PositiveFloat, PositiveFloat] = (0.7, 1.5)

    @model_validator(mode="after")
    def _check(self) -> "AugmentConfig":
        for name in ("scale", "blur_sigma", "brightness", "contrast", "gamma"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"seg.augment.{name} {[lo, hi]} must be [low, high] with low <= high")
        return self


class SegConfig(_Strict):
    """Segmenter (``augpaint_core.segmenters``); unet = MONAI BasicUNet: features = 5 encoder widths + the
    decoder's last width."""

    arch: Literal["unet", "deeplabv3", "transunet"] = Field(
        "unet", description="unet (MONAI BasicUNet, 31M), deeplabv3 (ResNet-50 + ASPP, 40M), transunet (R50-ViT, "
                            "102M)")
    resnet_width: PositiveInt = Field(64, description="ResNet-50 base width (deeplabv3, transunet); 64 = standard")
    output_stride: Literal[8, 16] = Field(16, description="deeplabv3: dilate the last stage(s) to this stride")
    vit_hidden: PositiveInt = Field(768, description="transunet: transformer width (768 = ViT-B)")
    vit_layers: PositiveInt = Field(12, description="transunet: transformer depth")
    vit_heads: PositiveInt = Field(12, description="transunet: attention heads")
    semi_supervised: Literal["none", "unimatch"] = Field(
        "none", description="unimatch: add weak-to-strong consistency on the unlabeled training slices")
    unimatch_threshold: float = Field(0.95, gt=0.0, le=1.0, description="pseudo-label confidence threshold")
    unimatch_weight: float = Field(1.0, ge=0.0, description="weight of the unlabeled consistency loss")
    unimatch_batch_size: PositiveInt = Field(4, description="unlabeled slices per step")

    @model_validator(mode="after")
    def _check(self) -> "SegConfig":
        if self.vit_hidden % self.vit_heads:
            raise ValueError(f"seg.vit_hidden {self.vit_hidden} must be divisible by seg.vit_heads {self.vit_heads}")
        return self

    features: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt, PositiveInt, PositiveInt] = (
        64, 128, 256, 512, 1024, 64)
    epochs: PositiveInt = 120
    max_steps: PositiveInt | None = Field(
        None, description="if set, train exactly this many steps (same budget for baseline and AugPaint)")
    batch_size: PositiveInt = 4
    lr: PositiveFloat = 5e-4
    val_checks: PositiveInt = Field(10, description="validations (best-checkpoint choice) spread over training")
    augment: AugmentConfig = Field(AugmentConfig(), description="on-the-fly batch augmentation (nnU-Net style)")


class FilterConfig(_Strict):
    keep_fraction: float = Field(0.5, gt=0.0, le=1.0)
    per_source: bool = Field(False, description="keep the top keep_fraction of each source slice's samples instead "
                                                "of the whole pool's, so every source survives (the paper ranks "
                                                "the whole pool)")
    scorer_epochs: PositiveInt = 120
    scorer_max_steps: PositiveInt | None = None
    reject_background: bool = Field(False, description="also reject samples where the scorer finds a target "
                                                        "structure outside the kept boxes (an organ generated in "
                                                        "the background)")
    background_max_fraction: float = Field(0.005, ge=0.0, le=1.0, description="predicted foreground outside the "
                                                                               "kept boxes, as a fraction of the "
                                                                               "image, above which a sample is "
                                                                               "rejected")
    ood_reject: bool = Field(False, description="also reject samples whose scorer-feature Mahalanobis distance to "
                                                 "the real training slices exceeds the ood_quantile of held-out "
                                                 "real (val) slices' distances")
    ood_quantile: float = Field(0.99, gt=0.0, le=1.0)
    quality_report: bool = Field(True, description="write the synthetic-data quality report (quality.json)")
    quality_max_samples: PositiveInt = Field(500, description="synthetic samples used for MS-SSIM/nearest "
                                                              "neighbours (subsampled beyond)")
    quality_max_reference: PositiveInt = Field(2000, description="real slices used as references (subsampled "
                                                                 "beyond)")


class RuntimeConfig(_Strict):
    """Where and how the segmentation stages (train-seg, filter, evaluate) and the LDM previews run."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when a GPU is visible")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 autocast on a GPU that "
                                                                           "has it, else fp32")
    deterministic: bool | None = Field(None, description="torch.use_deterministic_algorithms; default on for CPU, "
                                                         "off on a GPU (opt in: slower kernels)")
    loader_workers: int | None = Field(None, ge=0, description="DataLoader worker processes for segmenter "
                                                               "training; default 0 on CPU, up to 4 on a GPU")
    eval_batch_size: PositiveInt = Field(16, description="images per forward pass in prediction and scoring")

    @model_validator(mode="after")
    def _check(self) -> "RuntimeConfig":
        if self.device == "cpu" and self.precision == "bf16":
            raise ValueError("runtime.precision bf16 needs runtime.device cuda or auto (CPU runs in fp32)")
        return self


class TrackingConfig(_Strict):
    experiment: str = "augpaint"


class TolerationConfig(_Strict):
    """One Kubernetes toleration (e.g. the taint on NVIDIA GPU nodes)."""

    key: str = "nvidia.com/gpu"
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""] = "NoSchedule"


class ClusterConfig(_Strict):
    """How the compiled pipeline runs on Kubeflow (read by ``augpaint compile``; ignored by local runs)."""

    gpu_resource: str = Field("nvidia.com/gpu", description="accelerator resource each GPU stage requests")
    gpus_per_task: PositiveInt = Field(1, description="GPUs per GPU task; only 1 is supported (no stage runs "
                                                      "data-parallel inside a task, extra GPUs would sit idle)")
    cpu_request: str = Field("4", description="CPU request of the GPU tasks")
    memory_request: str = Field("32G", description="memory request of the GPU tasks")
    small_cpu: str = Field("1", description="CPU request and limit of the CPU-only tasks (tracking, merge)")
    small_memory: str = Field("2G", description="memory request and limit of the CPU-only tasks")
    preprocess_cpu: str = Field("4", description="CPU request and limit of preprocess")
    preprocess_memory: str = Field("16G", description="memory request and limit of preprocess")
    tolerations: list[TolerationConfig] = Field(default_factory=lambda: [TolerationConfig()],
                                                description="tolerations of the GPU stages")
    node_selector: dict[str, str] = Field(default_factory=dict, description="node labels for the GPU stages, "
                                          "e.g. {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}")
    shm_size: str = Field("8Gi", description="size of the memory emptyDir mounted at /dev/shm")
    cpu_limit: str = "8"
    memory_limit: str = "48G"
    minio_secret: str = Field("augpaint-minio", description="secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                                                            "AUGPAINT_S3_ENDPOINT")
    mlflow_secret: str = Field("augpaint-mlflow", description="secret with MLFLOW_TRACKING_URI and "
                                                              "AUGPAINT_MLFLOW_SPOOL (s3:// prefix for records kept "
                                                              "while MLflow is down)")
    checkpoint_root: str = Field("s3://augpaint/checkpoints", description="where training tasks checkpoint on "
                                 "the cluster (s3:// prefix; <stage>/<hash of seed, settings and input data>), "
                                 "unless training.checkpoint_dir is set; a retried pod continues from there")
    retries: int = Field(2, ge=0, description="retries of the training and inpainting tasks")
    retry_backoff_s: PositiveInt = 60
    timeout_s: dict[str, PositiveInt] = Field(
        default_factory=lambda: {"preprocess": 6 * 3600, "train-ae": 48 * 3600, "train-ldm": 72 * 3600,
                                 "inpaint": 24 * 3600, "filter": 12 * 3600, "train-seg": 24 * 3600,
                                 "evaluate": 3600},
        description="per-stage timeout in seconds")
    shard_parallelism: PositiveInt = Field(8, description="at most this many inpainting shards (inpaint.num_shards, "
                                                          "one pod and GPU each) run at once")

    @model_validator(mode="after")
    def _check_gpus(self) -> "ClusterConfig":
        if self.gpus_per_task != 1:
            raise ValueError(f"cluster.gpus_per_task {self.gpus_per_task}: only 1 is supported; no stage trains "
                             "data-parallel inside one task (use inpaint.num_shards to spread inpainting over GPUs)")
        return self


SEED_MAX = 2**32 - 1  # numpy's and torch's generators take seeds up to this


class AugPaintConfig(_Strict):
    name: str = "augpaint"
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of every stage (0..2**32-1)")
    data: DataConfig = DataConfig()
    ae: AEConfig = AEConfig()
    ldm: LDMConfig = LDMConfig()
    inpaint: InpaintConfig = InpaintConfig()
    pixel: PixelDMConfig = PixelDMConfig()
    filter: FilterConfig = FilterConfig()
    seg: SegConfig = SegConfig()
    training: TrainingConfig = TrainingConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    tracking: TrackingConfig = TrackingConfig()
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="after")
    def _check_sizes(self) -> "AugPaintConfig":
        # The latent (image_size / 4) is halved by every LDM stage but the last; a size that does not divide
        # evenly crashes deep inside diffusers at train-ldm, so it is refused here.
        stages = len(self.ldm.block_channels)
        step = 4 * 2 ** (stages - 1)
        if self.data.image_size % step:
            raise ValueError(f"data.image_size {self.data.image_size} must be a multiple of {step} (the AE's 4 x "
                             f"2**(len(ldm.block_channels) - 1) = 2**{stages - 1} of the LDM's downsampling)")
        return self

    def flat(self) -> dict[str, Any]:
        """Flattened ``a.b.c -> value`` view, for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else value

        walk("", self.model_dump(mode="json"))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


MAX_YAML_BYTES = 1 << 20  # a config is a few KB; anything this large is not one
MAX_DEPTH = 20


def _depth(node: Any, limit: int) -> int:
    """Nesting depth of parsed YAML, counted without recursion (stops past ``limit``)."""
    stack, deepest = [(node, 1)], 0
    while stack:
        n, d = stack.pop()
        if isinstance(n, (dict, list)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((c, d + 1) for c in (n.values() if isinstance(n, dict) else n))
    return deepest


def _safe_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` that turns every failure (syntax, tags, nesting, size) into one line naming ``where``."""
    if len(text) > MAX_YAML_BYTES:
        raise AugPaintError(f"{where}: {len(text)} characters is too large for a config (at most {MAX_YAML_BYTES})")
    # Count flow/block nesting before parsing: PyYAML recurses per level and overflows the stack far earlier
    # than any real config nests.
    depth = max(_open_brackets(text), 0)
    if depth > 10 * MAX_DEPTH:
        raise AugPaintError(f"{where}: nested {depth} levels deep; a config nests at most {MAX_DEPTH}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise AugPaintError(f"{where}: not valid YAML: {(str(err).splitlines() or [''])[0]}") from None
    except (RecursionError, MemoryError):
        raise AugPaintError(f"{where}: nested too deeply to be a config") from None
    except ValueError as err:  # e.g. a timestamp or int PyYAML cannot represent
        raise AugPaintError(f"{where}: not valid YAML: {str(err)[:200]}") from None
    if _depth(data, MAX_DEPTH) > MAX_DEPTH:
        raise AugPaintError(f"{where}: nested more than {MAX_DEPTH} levels deep; a config nests at most {MAX_DEPTH}")
    return data


def _open_brackets(text: str) -> int:
    """Deepest ``[``/``{`` nesting in ``text`` (quotes ignored: a rough guard, checked exactly after parsing)."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _format_errors(err: ValidationError, where: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        got = e.get("input")
        got_s = f" (got {got!r})" if not isinstance(got, (dict, list)) and "input" in e else ""
        parts.append(f"{loc}: {e['msg']}{got_s}")
    return f"{where}: invalid config: " + "; ".join(parts)


def _apply_override(data: dict, override: str) -> None:
    if "=" not in override:
        raise AugPaintError(f"override {override!r}: expected key.path=value")
    key, raw = override.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise AugPaintError(f"--set {override!r}: expected key.path=value")
    value = _safe_yaml(raw, f"--set {override!r}")
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise AugPaintError(f"override {override!r}: {p} is not a section")
    node[parts[-1]] = value


def parse_config(data: Any, where: str = "<config>", overrides: list[str] | None = None) -> AugPaintConfig:
    """Validate a dict (already parsed YAML) into the schema, naming bad fields."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise AugPaintError(f"{where}: the config must be a YAML mapping, got {type(data).__name__}")
    for o in overrides or []:
        _apply_override(data, o)
    try:
        return AugPaintConfig.model_validate(data)
    except ValidationError as err:
        raise AugPaintError(_format_errors(err, where)) from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(p: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A YAML preset; ``extends: other.yaml`` (relative to it) is loaded first and overridden."""
    if not p.is_file():
        raise AugPaintError(f"{p}: config file not found" + (f" (extended by {chain[-1]})" if chain else ""))
    if p.resolve() in chain:
        raise AugPaintError(f"{p}: 'extends' loops back to itself")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise AugPaintError(f"{p}: not a UTF-8 text file (byte {err.start}); save the config as UTF-8 YAML") from None
    except OSError as err:
        raise AugPaintError(f"{p}: cannot read ({err.strerror or err})") from None
    data = _safe_yaml(text, str(p))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise AugPaintError(f"{p}: the config must be a YAML mapping, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return _merge(_read_yaml(p.parent / str(parent), chain + (p.resolve(),)), data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> AugPaintConfig:
    """Load and validate a YAML preset.

    Args:
        path: YAML file; it may name a base preset with ``extends: paper.yaml``.
        overrides: ``key.path=value`` strings applied before validation.
    """
    p = Path(path)
    return parse_config(_read_yaml(p), str(p), overrides)


def config_from_yaml_text(text: str, overrides: list[str] | None = None) -> AugPaintConfig:
    """Parse a config passed inline (the KFP pipeline parameter)."""
    data = _safe_yaml(text, "config_yaml parameter")
    return parse_config(data, "config_yaml parameter", overrides)
