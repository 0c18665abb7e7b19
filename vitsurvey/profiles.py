"""Run profiles: every size a notebook uses (samples, epochs, models, batches) in one place.

A notebook never hard-codes a size; it asks its profile. Three profiles exist:

* ``smoke`` -- CI and nbval: every cell runs, on tiny subsets, in about a minute on 2 CPU cores;
* ``cpu``   -- a laptop without a GPU: a real but small comparison, about 10 minutes a notebook;
* ``gpu``   -- one data-centre GPU: the comparison the notebooks' text discusses.

``auto`` (the default) picks one: the notebook's ``parameters`` cell first, then the environment
variable ``VITSURVEY_PROFILE``, then the hardware (``gpu`` when CUDA is available, else ``cpu``).
``smoke`` is never picked by the hardware: it must be asked for.

Data: ``smoke`` trains on the Fashion-MNIST subset shipped inside the package, so it never needs a
data set installed. ``cpu`` and ``gpu`` use full Fashion-MNIST where it is found or can be downloaded,
else the shipped subset, under its own name (:func:`vitsurvey.data.resolve`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

import torch

from . import data
from .checks import is_whole
from .models import ViTConfig

__all__ = [
    "ENV_VAR", "GRAD_CLIP", "LABEL_SMOOTHING", "PROFILES", "Profile", "VALID_NAMES", "get_profile",
]

ENV_VAR = "VITSURVEY_PROFILE"

LABEL_SMOOTHING = 0.1
"""Label smoothing of every cross-entropy on labels (as DeiT trains); fixed across profiles."""
GRAD_CLIP = 1.0
"""The gradient norm every training step clips to; fixed across profiles."""


@dataclass(frozen=True)
class Profile:
    """All sizes of one run profile. Fields are documented where a notebook's reader needs them."""

    name: str
    device: str
    # data
    dataset: str = "fashion_mnist"
    train_samples: int | None = None
    """Training images used (a seeded subset); ``None`` means the whole training split."""
    test_samples: int | None = None
    """Test images used for accuracy (a seeded subset); ``None`` means the whole test split."""
    val_samples: int | None = 5_000
    """Training images held out for validation (:func:`vitsurvey.data.validation_images`): never trained on, and
    where every choice is made, so the test set is met once per final model. ``None``: none held out."""
    # training the baseline
    baseline: ViTConfig = field(default_factory=lambda: _fmnist_vit(patch_size=7, embed_dim=96, depth=6, num_heads=3))
    """The small ViT that notebook 01 trains and later notebooks compress (image size, channels and
    classes are adapted to the data set by :func:`vitsurvey.train.baseline_config`)."""
    token_baseline: ViTConfig | None = None
    """The baseline of the token-reduction study (notebook 06) where the main one has too few tokens for
    it (``None``: the main baseline). Trained like the main one, for ``token_baseline_epochs``."""
    token_baseline_epochs: int | None = None
    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    augment: bool = True
    amp: bool = False
    """bf16 autocast while training (GPU only)."""
    # benchmarking
    bench_batch_sizes: tuple[int, ...] = (1, 8, 32)
    """Batch sizes tried by the throughput sweep (it stops early when memory runs out)."""
    bench_warmup: int = 2
    bench_iters: int = 5
    bench_min_seconds: float = 0.0
    """Timed passes continue past ``bench_iters`` until this much time has elapsed (steadier rates)."""
    latency_iters: int = 10
    timing_rounds: int = 9
    """Interleaved rounds every speed comparison runs at least (:func:`vitsurvey.measure.relative_throughput`)."""
    timing_max_rounds: int = 25
    """Rounds it may add while a ratio's 95% interval is wider than ``timing_tolerance`` either side of it."""
    timing_tolerance: float = 0.02
    timing_iters: int = 3
    """Passes per timing, of which the fastest counts."""
    timing_threads: int | None = 1
    """Threads per model while timing on a CPU: 1 (per-core throughput by the thread's CPU time, which other
    processes cannot distort) or None (the whole machine, wall clock)."""
    sweep_batch_sizes: tuple[int, ...] = (1, 8)
    """Batch sizes when many models are benchmarked in one notebook (02, 11)."""
    protocol_models: tuple[str, ...] = ()
    """timm models that notebook 02 measures."""
    s3_models: int | None = None
    """How many of S3's timm-buildable models notebook 11 benchmarks (None: all of them)."""
    # compressing the baseline (notebooks 05 onwards)
    finetune_samples: int | None = 10_000
    """Training images for the short fine-tune after compression (a seeded subset)."""
    finetune_epochs: int = 1
    token_finetune_samples: int | None = 10_000
    """Training images for the fine-tune after token reduction (notebook 06), whose 50-token baseline trains slower
    per image than the main one (:meth:`for_tokens`)."""
    finetune_lr: float = 2e-4
    compression_levels: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    """Fractions removed (weights, heads and neurons, tokens) at which a strategy is evaluated."""
    slim_tolerances: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    """Output-error tolerances at which Patch Slimming is run (relative L2 error of the logits)."""
    slim_sample: int = 64
    """Training images on which Patch Slimming chooses its keep sets."""
    slim_finetune_steps: int = 10
    calib_samples: int = 256
    """Training images used to calibrate post-training quantization."""
    compile_int8: bool = True
    """Whether notebook 08 compiles torchao's int8 model (torch.compile takes about half a minute on a CPU)."""
    # distillation (notebook 07)
    student: ViTConfig = field(default_factory=lambda: _fmnist_vit(patch_size=7, embed_dim=64, depth=4, num_heads=2))
    """The ViT that notebook 07 trains with and without a teacher: smaller than the baseline."""
    student_samples: int | None = 20_000
    """Training images for every student (a seeded subset; the same for each, so the steps are equal)."""
    student_epochs: int = 3
    student_epoch_sweep: tuple[int, ...] = (1, 3, 9)
    """Training lengths (epochs over ``student_samples`` images) at which notebook 07 trains the student without a
    teacher and with the CNN teacher's hard labels again, every seed: whether distillation's effect, if it has one,
    appears only with longer training. A length equal to ``student_epochs`` reuses the main comparison's students."""
    teacher_channels: tuple[int, ...] = (16, 32, 64, 128)
    """Widths of the convolutional teacher's stages (:func:`vitsurvey.models.small_resnet`)."""
    teacher_epochs: int | None = None
    """Epochs of the teacher's training (``None``: the baseline's ``epochs``)."""
    # token mixers (notebook 04)
    mixer_samples: int | None = 6_000
    """Training images for every mixer's model (a seeded subset; the same for each, so the steps are equal)."""
    mixer_epochs: int = 3
    mixer_grids: tuple[int, ...] = (4, 8, 16, 32, 64)
    """Token grids (patches per side) at which every mixer layer is counted and timed: N = side^2 tokens."""
    mixer_models: int | None = None
    """How many of notebook 04's timm production models (one per mixer family) it profiles (None: all)."""
    # data multiplexing (notebook 09)
    multiplex_samples: int | None = 20_000
    """Training images for the plain ViT and every multiplexer (a seeded subset; the same for each)."""
    multiplex_epochs: int = 3
    multiplex_k: int = 4
    """Abstract tokens per image in ConcatPlexer: the square of a divisor of the baseline's patch grid."""
    # Efficiency 360 (notebook 10)
    e360_samples: int | None = 4_000
    """Test images each 360 card is measured on (a seeded subset; None: the whole test split)."""
    e360_train_samples: int | None = 10_000
    """Training images of the models that notebook 10 trains itself (private, imbalanced, class-incremental)."""
    e360_epochs: int = 3
    dp_epsilons: tuple[float, ...] = (0.25, 1.0, 8.0)
    """Privacy budgets of the differentially private trainings (delta: a tenth of 1 / training images). The smallest
    is there so the membership check can fail: epsilon-DP caps an attack's AUC at e^eps / (e^eps + 1), 0.56 at 0.25,
    low enough that the shadow-model attack on a non-private model can pass it (notebook 10 measures whether it does),
    so a private training that leaked would show."""
    dp_train_sizes: tuple[int, ...] = (250, 1000)
    """Training-set sizes of notebook 10's privacy study: at each, a non-private model and one per budget are trained
    on that many images, attacked against as many never trained on (so 2 x the largest, plus the smallest for
    tuning, must fit in the training split)."""
    dp_epochs: int = 12
    """Epochs of the privacy study's non-private models and shadow models (long enough to fit their few images)."""
    dp_batch_size: int = 64
    """Batch size (expected, under DP's Poisson sampling) of every model of the privacy study."""
    dp_shadows: int = 4
    """Shadow models of the membership attack (LiRA) per training-set size: an even number, each image left out by
    half of them."""
    dp_clip_norms: tuple[float, ...] = (0.5, 2.0)
    """Per-image gradient norms DP-SGD clips to, tried on the validation images (with ``dp_lrs`` and
    ``dp_epoch_choices``: the tuning grid)."""
    dp_lrs: tuple[float, ...] = (1e-3, 4e-3)
    """Learning rates of private training tried on the validation images."""
    dp_epoch_choices: tuple[int, ...] = (4, 8)
    """Epochs of private training tried on the validation images (more epochs at one budget: more noise per step)."""
    # scaling study in notebook 01: ViT-Ti at these image sizes
    resolutions: tuple[int, ...] = (224,)
    timing_batch: int = 4
    seed: int = 0
    """The training seed: initialisation, data order, augmentation. The subsets of images a profile uses do not
    depend on it (:data:`vitsurvey.data.SAMPLE_SEED`), so models trained with different seeds meet the same test
    images and can be compared paired."""
    seeds: int = 3
    """How many training seeds a comparison that trains models runs (:meth:`training_seeds`): the spread between
    seeds is part of every accuracy verdict drawn from trained models."""

    def training_seeds(self) -> tuple[int, ...]:
        """The seeds of a comparison: ``seed``, ``seed + 1``, ... (``seeds`` of them)."""
        return tuple(range(self.seed, self.seed + self.seeds))

    def __post_init__(self) -> None:
        """Refuse sizes that would run but measure nothing (``bench_iters=0`` times no pass) or read as "unset"."""

        def number(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        problems = []
        for name in _POSITIVE_INTS:
            v = getattr(self, name)
            if not is_whole(v, minimum=1):
                problems.append(f"{name} must be a whole number >= 1, not {v!r}")
        for name in _OPTIONAL_POSITIVE_INTS:
            v = getattr(self, name)
            if v is not None and not is_whole(v, minimum=1):
                problems.append(f"{name} must be a whole number >= 1 (or None: all of them), not {v!r}")
        for name in _NON_NEGATIVE_INTS:
            v = getattr(self, name)
            if not is_whole(v, minimum=0):
                problems.append(f"{name} must be a whole number >= 0, not {v!r}")
        for name in _POSITIVE_FLOATS:
            v = getattr(self, name)
            if not (number(v) and v > 0):
                problems.append(f"{name} must be a positive number, not {v!r}")
        for name in _NON_NEGATIVE_FLOATS:
            v = getattr(self, name)
            if not (number(v) and v >= 0):
                problems.append(f"{name} must be a number >= 0, not {v!r}")
        for name in _POSITIVE_INT_TUPLES:
            v = getattr(self, name)
            if not v or not all(is_whole(b, minimum=1) for b in v):
                problems.append(f"{name} must list whole numbers >= 1, not {v!r}")
        for name in _POSITIVE_FLOAT_TUPLES:
            v = getattr(self, name)
            if not v or not all(number(b) and b > 0 for b in v):
                problems.append(f"{name} must list positive finite numbers, not {v!r}")
        if problems:
            raise ValueError(f"Profile {self.name!r}: " + "; ".join(problems) + ".")

    def timing(self) -> dict[str, float | int]:
        """Keyword arguments of :func:`vitsurvey.measure.relative_throughput` for this profile."""
        return {"rounds": self.timing_rounds, "max_rounds": self.timing_max_rounds,
                "tolerance": self.timing_tolerance, "warmup": self.bench_warmup, "iters": self.timing_iters,
                "threads": self.timing_threads}

    def for_tokens(self) -> Profile:
        """This profile with the token-reduction baseline as its baseline (the main one where there is none), and
        ``token_finetune_samples`` images for its fine-tunes."""
        if self.token_baseline is None:
            return self.replace(finetune_samples=self.token_finetune_samples)
        return self.replace(baseline=self.token_baseline, epochs=self.token_baseline_epochs or self.epochs,
                            finetune_samples=self.token_finetune_samples)

    def for_students(self) -> Profile:
        """This profile with the distillation student as its baseline, trained on ``student_samples``
        images for ``student_epochs`` (notebook 07)."""
        return self.replace(baseline=self.student, train_samples=self.student_samples, epochs=self.student_epochs)

    def for_mixers(self) -> Profile:
        """This profile trained on ``mixer_samples`` images for ``mixer_epochs``: the equal budget every token
        mixer gets in notebook 04."""
        return self.replace(train_samples=self.mixer_samples, epochs=self.mixer_epochs)

    def for_multiplex(self) -> Profile:
        """This profile trained on ``multiplex_samples`` images for ``multiplex_epochs``: the equal budget of the
        plain ViT and every multiplexer in notebook 09."""
        return self.replace(train_samples=self.multiplex_samples, epochs=self.multiplex_epochs)

    def for_360(self) -> Profile:
        """This profile trained on ``e360_train_samples`` images for ``e360_epochs``: the budget of every model
        notebook 10 trains itself (each against a control trained alike)."""
        return self.replace(train_samples=self.e360_train_samples, epochs=self.e360_epochs)

    def replace(self, **changes: object) -> Profile:
        """A copy with some fields changed, e.g. ``profile.replace(epochs=2)``."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


_POSITIVE_INTS = ("seeds", "epochs", "batch_size", "bench_iters", "latency_iters", "timing_rounds", "timing_max_rounds",
                  "timing_iters", "timing_batch", "finetune_epochs", "slim_sample", "calib_samples", "student_epochs",
                  "mixer_epochs", "multiplex_epochs", "multiplex_k", "e360_epochs", "dp_epochs", "dp_batch_size",
                  "dp_shadows")
_OPTIONAL_POSITIVE_INTS = ("train_samples", "test_samples", "val_samples", "token_baseline_epochs", "s3_models",
                           "finetune_samples", "token_finetune_samples", "student_samples", "teacher_epochs",
                           "mixer_samples", "mixer_models", "multiplex_samples", "e360_samples", "e360_train_samples",
                           "timing_threads")
_NON_NEGATIVE_INTS = ("bench_warmup", "slim_finetune_steps", "seed")
_POSITIVE_FLOATS = ("lr", "finetune_lr")
_NON_NEGATIVE_FLOATS = ("weight_decay", "warmup_epochs", "bench_min_seconds", "timing_tolerance")
_POSITIVE_INT_TUPLES = ("bench_batch_sizes", "sweep_batch_sizes", "resolutions", "mixer_grids", "teacher_channels",
                        "student_epoch_sweep", "dp_train_sizes", "dp_epoch_choices")
_POSITIVE_FLOAT_TUPLES = ("dp_clip_norms", "dp_lrs", "dp_epsilons")


def _fmnist_vit(**kw: object) -> ViTConfig:
    return ViTConfig(img_size=28, in_chans=1, num_classes=10, **kw)  # type: ignore[arg-type]


# Twelve timm models for notebook 02: plain ViTs of three sizes, DeiT variants, hybrids, a hierarchical
# transformer, an MLP-mixer and a CNN; nine of them are also in S3's data.
_PROTOCOL_MODELS = (
    "vit_tiny_patch16_224", "deit_tiny_patch16_224", "vit_small_patch16_224", "deit3_small_patch16_224",
    "vit_base_patch16_224", "efficientformerv2_s0", "coat_tiny", "xcit_tiny_12_p16_224",
    "swin_tiny_patch4_window7_224", "mixer_s16_224", "resnet50", "levit_128s",
)

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        device="cpu",
        seeds=2,
        val_samples=256,
        dataset="fashion_mnist_subset",
        train_samples=512,
        test_samples=256,
        baseline=_fmnist_vit(patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0),
        epochs=1,
        batch_size=64,
        warmup_epochs=0.2,
        bench_batch_sizes=(1, 4),
        bench_warmup=1,
        bench_iters=2,
        latency_iters=3,
        timing_rounds=3,
        timing_max_rounds=3,
        timing_iters=1,
        resolutions=(32, 64),
        timing_batch=2,
        sweep_batch_sizes=(1, 2),
        finetune_samples=256,
        token_finetune_samples=256,
        compression_levels=(0.3, 0.6),
        slim_tolerances=(0.1, 0.3),
        slim_sample=16,
        slim_finetune_steps=2,
        calib_samples=32,
        compile_int8=False,
        protocol_models=("vit_tiny_patch16_224", "deit_tiny_patch16_224", "resnet50"),
        s3_models=2,
        student=_fmnist_vit(patch_size=4, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0),
        student_samples=256,
        student_epochs=1,
        student_epoch_sweep=(1, 2),
        teacher_channels=(8, 8, 16, 16),
        mixer_samples=256,
        mixer_epochs=1,
        mixer_grids=(4, 8),
        mixer_models=2,
        multiplex_samples=256,
        multiplex_epochs=1,
        multiplex_k=1,  # the smoke baseline's 7 x 7 grid: k is 1 or 49
        e360_samples=64,
        e360_train_samples=256,
        e360_epochs=1,
        dp_train_sizes=(64, 128),
        dp_epochs=2,
        dp_batch_size=32,
        dp_shadows=2,
        dp_clip_norms=(1.0,),
        dp_lrs=(2e-3,),
        dp_epoch_choices=(1,),
    ),
    "cpu": Profile(
        name="cpu",
        device="cpu",
        train_samples=None,
        test_samples=None,
        baseline=_fmnist_vit(embed_dim=96, depth=6, num_heads=3, patch_size=7),
        # 7 x 7 patches of 4 pixels: 50 tokens, enough for token reduction to have something to choose from
        token_baseline=_fmnist_vit(embed_dim=96, depth=6, num_heads=3, patch_size=4),
        token_baseline_epochs=2,
        epochs=6,
        teacher_epochs=3,  # the small ResNet passes the baseline's accuracy in half its epochs
        batch_size=128,
        lr=2e-3,
        augment=False,  # at 6 epochs augmentation costs more accuracy than it gains
        warmup_epochs=0.3,
        bench_batch_sizes=(1, 8, 32, 64),
        # per timing: 1 warm-up and >= 3 passes over >= 1 s; the spread comes from the interleaved rounds,
        # so more short rounds say more than fewer long ones
        bench_warmup=1,
        bench_iters=3,
        bench_min_seconds=1.0,
        latency_iters=20,
        resolutions=(64, 96, 128, 160, 224, 288),
        timing_batch=4,
        sweep_batch_sizes=(1, 8),
        protocol_models=_PROTOCOL_MODELS,
        # Three training seeds (the default) for every trained comparison cost these sizes, to keep each notebook
        # within 20 minutes on 2 cores (each notebook's header gives its measured time): 15,000 images per student
        # (from 20,000, notebook 07), 12,000 per multiplexer (from 20,000, notebook 09), 2,000 per fine-tune after
        # token reduction (from 10,000, notebook 06, whose 39 fine-tunes, each scored on the test and validation
        # images, took most of its 24 minutes at 4,000), 4,000 per model notebook 10 trains itself (from 10,000);
        # multiplexers train for 2 epochs (from 3, notebooks 09 and 12); notebook 04's token grids stop at 32 x 32
        # (1,024 tokens, beyond every mixer's crossover) instead of 64 x 64, whose timings took most of its time; and
        # notebook 11 benchmarks the 14 cheapest of S3's 19 timm-buildable models (up to 9.3 GMACs: every 384-px model
        # and ViT-B/16 left out), which notebook 02's ViT-B/16 timing stands in for.
        # Notebook 10's privacy study (the dp_ fields, defaults above) trains on 250 and 1,000 images, 4 shadow models
        # per size, DP-SGD tuned over 2 clip norms x 2 learning rates x 2 epoch counts at 250 images: about 6 minutes,
        # in place of the 4 minutes its former private trainings on 4,000 images took.
        # To keep all 13 notebooks within 150 minutes in one `make run`: the fine-tune after compression sees 5,000
        # images (from 10,000; notebooks 05, 07, 08, 10, 12: every compressed model and its control alike), and a speed
        # comparison whose interval is still wider than the tolerance stops adding rounds at 15 (from 25): the
        # interval it reports is then wider, never narrower, than the tolerance asked for. Each timing is the
        # fastest of 2 passes (from 3): with A B B A rounds a model's reading is still the fastest of 4 passes per
        # round, the A/A check passes with it idle and under load, and the timings take a third less time.
        mixer_grids=(4, 8, 16, 32),
        student_samples=15_000,
        multiplex_samples=12_000,
        multiplex_epochs=2,
        token_finetune_samples=2_000,
        e360_train_samples=4_000,
        s3_models=14,
        finetune_samples=5_000,
        timing_max_rounds=15,
        timing_iters=2,
    ),
    "gpu": Profile(
        name="gpu",
        device="cuda",
        seeds=5,
        train_samples=None,
        test_samples=None,
        baseline=_fmnist_vit(embed_dim=192, depth=9, num_heads=3, patch_size=2),
        epochs=30,
        batch_size=256,
        lr=1e-3,
        warmup_epochs=2.0,
        amp=True,
        bench_batch_sizes=(1, 8, 32, 64, 128, 256, 512, 1024, 2048),
        bench_warmup=10,
        bench_iters=50,
        bench_min_seconds=1.0,
        latency_iters=100,
        timing_iters=10,
        timing_threads=None,
        resolutions=(64, 128, 224, 320, 384, 448, 512, 640),
        timing_batch=64,
        sweep_batch_sizes=(16, 32, 64, 128, 256, 512, 1024, 2048),  # S3: powers of two up to the memory limit
        finetune_samples=None,
        finetune_epochs=3,
        token_finetune_samples=None,
        slim_sample=256,
        slim_finetune_steps=50,
        student=_fmnist_vit(embed_dim=96, depth=6, num_heads=3, patch_size=2),
        student_samples=None,
        student_epochs=10,
        student_epoch_sweep=(3, 10, 30),
        teacher_channels=(64, 128, 256, 512),
        mixer_samples=None,
        mixer_epochs=10,
        mixer_grids=(4, 8, 16, 32, 64, 96, 128),
        multiplex_samples=None,
        multiplex_epochs=10,
        multiplex_k=49,  # 14 x 14 patches, 2 x 2 of them per abstract token
        e360_samples=None,
        e360_train_samples=None,
        e360_epochs=10,
        dp_epsilons=(0.25, 1.0, 3.0, 8.0),
        dp_train_sizes=(1_000, 4_000),
        dp_epochs=20,
        dp_batch_size=256,
        dp_shadows=8,
        dp_clip_norms=(0.5, 1.0, 2.0),
        dp_lrs=(5e-4, 1e-3, 4e-3),
        dp_epoch_choices=(10, 20),
        protocol_models=_PROTOCOL_MODELS,
    ),
}
VALID_NAMES: tuple[str, ...] = (*PROFILES, "auto")


def get_profile(name: str | None = "auto", resolve_data: bool = True) -> Profile:
    """Resolve a profile name: the argument, then ``$VITSURVEY_PROFILE``, then the hardware.

    ``None`` and ``"auto"`` both mean "not chosen here". An unknown name, from either the argument
    or the environment, raises ``ValueError`` naming the valid ones. With ``resolve_data`` the
    profile's data set is the one that will actually be used: where full Fashion-MNIST is neither
    found nor downloadable, the shipped subset (see :func:`vitsurvey.data.resolve`).
    """
    chosen, source = name, "argument"
    if chosen is None or chosen == "auto":
        chosen, source = os.environ.get(ENV_VAR) or "auto", f"${ENV_VAR}"
    chosen = chosen.strip().lower()
    if chosen == "auto":
        chosen = "gpu" if torch.cuda.is_available() else "cpu"
    if chosen not in PROFILES:
        raise ValueError(
            f"Unknown run profile {chosen!r} (from the {source}). "
            f"Valid profiles: {', '.join(VALID_NAMES)}."
        )
    profile = PROFILES[chosen]
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "The 'gpu' profile needs a CUDA GPU, and torch sees none here. "
            "Use profile 'cpu' (or 'auto', which picks it on this machine)."
        )
    if resolve_data:
        profile = data.resolve(profile)
    return profile
