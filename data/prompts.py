"""Prompt building: the chat turns given to the policy for one study.

The paper (MRG-R1, Sec. III-C "Format Reward") asks the model to reason inside `<think>...</think>` and to put
the final report inside `<report>...</report>`, but does not publish its prompt text. The defaults below are
this project's own wording; they live in `PromptConfig` so a recipe can change them without touching the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SYSTEM = (
    "You are an experienced radiologist. You read chest X-rays carefully and write accurate, concise "
    "reports that state both abnormal and normal findings."
)
DEFAULT_INSTRUCTION = (
    "Look at the chest X-ray and write the findings section of its radiology report. First reason about "
    "what you see inside <think> </think>, then give the final report inside <report> </report>."
)


@dataclass(frozen=True)
class PromptConfig:
    """The texts of the prompt.

    system: the system turn; an empty string leaves it out (the chat template then inserts the model's
        default system turn, as Qwen2.5-VL's does).
    instruction: the user turn's text, placed after the image(s); it must ask for the
        `<think>` -> `<report>` format that the format reward checks.
    """

    system: str = DEFAULT_SYSTEM
    instruction: str = DEFAULT_INSTRUCTION

    def __post_init__(self) -> None:
        if not self.instruction.strip():
            raise ValueError("PromptConfig.instruction must not be empty")


def image_count(sample_or_image_count) -> int:
    """The number of images of a sample (anything with `image_paths`) or an int given directly."""
    if isinstance(sample_or_image_count, bool):
        raise TypeError("image count must be an int or a sample with image_paths, got a bool")
    if isinstance(sample_or_image_count, int):
        count = sample_or_image_count
    elif hasattr(sample_or_image_count, "image_paths"):
        count = len(sample_or_image_count.image_paths)
    else:
        raise TypeError(
            f"expected an int or a sample with image_paths, got {type(sample_or_image_count).__name__}"
        )
    if count < 1:
        raise ValueError(f"a prompt needs at least one image, got {count}")
    return count


def build_messages(sample_or_image_count, cfg: PromptConfig | None = None) -> list[dict]:
    """Chat messages for one prompt: the system turn (if any), then a user turn with one image placeholder
    per image followed by the instruction. Content is in list form, as multimodal chat templates expect."""
    cfg = cfg or PromptConfig()
    n_images = image_count(sample_or_image_count)
    messages = []
    if cfg.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": cfg.system}]})
    user_content = [{"type": "image"} for _ in range(n_images)]
    user_content.append({"type": "text", "text": cfg.instruction})
    messages.append({"role": "user", "content": user_content})
    return messages


def render_prompt(processor, sample_or_image_count, cfg: PromptConfig | None = None) -> str:
    """The prompt text through the processor's chat template, ending with the assistant header so that
    generation starts the answer. Image placeholders are expanded later, by the processor call."""
    return processor.apply_chat_template(
        build_messages(sample_or_image_count, cfg), tokenize=False, add_generation_prompt=True
    )
