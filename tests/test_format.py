"""Format reward (1 / 0.5 / 0 rule) and report extraction, including the no-<report> fallback."""

import pytest

from rewards.format import extract_report, format_reward

GOOD = "<think>Heart looks normal; no fluid.</think>\n<report>No acute cardiopulmonary process.</report>"


def test_full_compliance_scores_one():
    assert format_reward(GOOD) == 1.0
    assert format_reward("  \n" + GOOD + "\n\n") == 1.0, "surrounding whitespace is not a violation"


@pytest.mark.parametrize(
    "text",
    [
        "<think></think><report>Clear lungs.</report>",  # empty reasoning
        "<think>   </think><report>Clear lungs.</report>",  # whitespace-only reasoning
        "Sure! " + GOOD,  # text before <think>
        "<think>r</think> Final answer: <report>Clear lungs.</report>",  # text between blocks
        GOOD + " Hope this helps.",  # text after </report>
    ],
)
def test_minor_violations_score_half(text):
    assert format_reward(text) == 0.5


@pytest.mark.parametrize(
    "text",
    [
        "",
        "No acute disease.",  # no tags at all
        "<think>r</think>No acute disease.",  # no report block
        "<report>Clear.</report>",  # no think block
        "<think>r</think><report>   </report>",  # empty report
        "<report>Clear.</report><think>r</think>",  # wrong order
        "<think>r<report>Clear.</think></report>",  # interleaved / unbalanced
        "<think>r</think><report>Clear.",  # unclosed report (truncated)
        "<think>a</think><think>b</think><report>Clear.</report>",  # repeated tag
        "<Think>r</Think><Report>Clear.</Report>",  # tags are case-sensitive
    ],
)
def test_structural_failures_score_zero(text):
    assert format_reward(text) == 0.0


def test_extract_report_returns_block_content_stripped():
    assert extract_report(GOOD) == "No acute cardiopulmonary process."


def test_extract_report_keeps_a_truncated_report():
    assert (
        extract_report("<think>r</think><report>Small left effusion. Heart") == "Small left effusion. Heart"
    )


def test_extract_report_never_returns_reasoning():
    assert (
        extract_report("<think>maybe <report>pneumonia</report>?</think><report>Clear.</report>") == "Clear."
    )
    assert extract_report("<think>cardiomegaly? still thinking") == ""
    assert extract_report("reasoning from a prefilled think</think> Mild edema.") == "Mild edema."


def test_extract_report_falls_back_to_plain_text_without_report_tag():
    assert extract_report("  Mild cardiomegaly.\nNo effusion. ") == "Mild cardiomegaly.\nNo effusion."
    assert extract_report("<think>r</think>\nNo effusion.") == "No effusion."
    assert extract_report("") == ""
