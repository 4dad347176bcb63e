"""The curriculum (docs/CONTRACT.md): kata number -> folder and module name."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KATAS_DIR = ROOT / "katas"

# number: (folder under katas/, module name in stubs/ and reference/)
KATAS: dict[str, tuple[str, str]] = {
    "01": ("01_memory_math", "memory_math"),
    "02": ("02_sampling", "sampling"),
    "03": ("03_online_softmax", "online_softmax"),
    "04": ("04_attention", "attention"),
    "05": ("05_flash_attention", "flash_attention"),
    "06": ("06_transformer", "transformer"),
    "07": ("07_paged_allocator", "paged_allocator"),
    "08": ("08_paged_attention", "paged_attention"),
    "09": ("09_prefix_cache", "prefix_cache"),
    "10": ("10_scheduler", "scheduler"),
    "11": ("11_quantization", "quantization"),
    "12": ("12_gptq", "gptq"),
    "13": ("13_spec_decode", "spec_decode"),
    "14": ("14_tensor_parallel", "tensor_parallel"),
    "15": ("15_moe", "moe"),
    "16": ("16_mini_engine", "mini_engine"),
}


def built_katas() -> list[str]:
    """Numbers of the katas that exist in this checkout (have a folder with tests)."""
    return [n for n, (folder, _) in KATAS.items() if (KATAS_DIR / folder).is_dir()]


def kata_of_path(path: str | Path) -> str | None:
    """The kata number a test file belongs to, or None."""
    parts = Path(path).resolve().parts
    for number, (folder, _) in KATAS.items():
        if folder in parts:
            return number
    return None


def readme_path(number: str) -> Path:
    return KATAS_DIR / KATAS[number][0] / "README.md"


def task_titles(number: str) -> dict[str, str]:
    """{'1': "`softmax`", ...}: the README's '## Task N: title' headings, in order."""
    path = readme_path(number)
    titles: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.startswith("## Task ") and ":" in line:
                head, _, title = line[len("## Task "):].partition(":")
                if head.strip().isdigit():
                    titles[head.strip()] = title.strip()
    return titles
