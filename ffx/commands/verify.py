import click

from ffx.cli import FiniteFloat, InputPath, print_json, warn
from ffx.commands.output_options import json_option
from ffx.commands.preprocess_option import naming_the_flag, parse_preprocess, preprocess_option
from ffx.commands.runner_options import RunnerOptionGroup
from ffx.errors import GateFailed
from ffx.runtime.tasks.verify import DEFAULT_MAX_TOP1_DROP

RUNNER = RunnerOptionGroup(threads=True, batch_size=32)


@click.command("verify")
@click.argument("candidate", type=InputPath(dir_okay=False))
@click.option("--reference", type=InputPath(dir_okay=False), help="Model to compare against: usually the PyTorch checkpoint or the FP32 ONNX [default: the FP32 ONNX the candidate's sidecar and manifest lead to].")
@click.option("--data", type=InputPath(), help="Labelled images: one folder per class, or a list file of `path label` lines (required to compare).")
@click.option("--limit", type=click.IntRange(min=1), help="Use a seeded random sample of N images (all classes).")
@click.option("--max-top1-drop", type=FiniteFloat(min=0, max=100), default=DEFAULT_MAX_TOP1_DROP, show_default=True, help="Fail (exit 1) when the candidate's top-1 is lower by more than this many points.")
@click.option("--strict", is_flag=True, help="Gate on the upper end of the drop's 95% interval instead of the estimate (needs enough images to pass).")
@RUNNER
@preprocess_option
@json_option()
def command(candidate, reference, data, limit, max_top1_drop, strict, batch_size, provider, threads, preprocess_text, as_json):
    """Accuracy gate: CANDIDATE vs --reference on the same labelled, preprocessed images.

    Each model is an engine, an ONNX model or a checkpoint. Reports top-1/top-5 of both, the
    top-1 drop with a paired 95% confidence interval, top-1 agreement, logit cosine similarity
    and max abs error, and the classes that lost most. Exit 0: passed, 1: the drop exceeds
    --max-top1-drop, 2: bad input.

    Without --reference, an engine is compared with the FP32 ONNX its records lead to (the
    sidecar names the ONNX it was built from; a calibrated ONNX's manifest names its FP32 source;
    every sha256 is checked).

    \b
    Examples:
      ffx verify model.engine --data val/           # reference: the FP32 ONNX behind the engine
      ffx verify model.engine --reference model.pth --data val/
      ffx verify model.int8.onnx --reference model.onnx --data val/ --limit 500 --json
    """
    from ffx.runtime.tasks.verify import verify

    with naming_the_flag():
        report = verify(candidate, reference, data, limit=limit, max_top1_drop=max_top1_drop,
                        batch_size=batch_size, provider=provider, progress=None, strict=strict,
                        threads=threads, preprocess=parse_preprocess(preprocess_text))
    for message in report.warnings:
        warn(message)
    if as_json:
        print_json(report.to_dict())
    else:
        _print_report(report)
    if not report.passed:
        measured = (f"the 95% upper bound of the top-1 drop is {report.top1_drop_ci95[1]:.2f} points"
                    if report.gate != "estimate" else f"top-1 dropped by {report.top1_drop:.2f} points")
        raise GateFailed(
            f"{measured} (limit {report.max_top1_drop:g}): "
            f"{report.candidate['path']} fails against {report.reference['path']}"
        )


def _print_report(report):
    ref, cand = report.reference, report.candidate
    low, high = report.top1_drop_ci95
    width = max(len(ref["path"]), len(cand["path"]), 9)
    click.echo(f"{report.images} images ({report.seconds:.1f} s)")
    click.echo(f"  {'':<10} {'model':<{width}}  {'backend':<16} {'precision':<9} {'top-1':>7} {'top-5':>7}")
    for label, row in (("reference", ref), ("candidate", cand)):
        click.echo(f"  {label:<10} {row['path']:<{width}}  {row['backend']:<16} {row['precision']:<9} "
                   f"{row['top1']:6.2f}% {row['top5']:6.2f}%")
    click.echo(f"top-1 drop {report.top1_drop:+.2f} points (95% CI {low:+.2f} to {high:+.2f}; "
               f"{report.discordant['reference_only']} images right only in the reference, "
               f"{report.discordant['candidate_only']} only in the candidate)")
    click.echo(f"top-1 agreement {report.agreement:.2f}%, logit cosine mean {report.logit_cosine_mean:.5f} "
               f"(min {report.logit_cosine_min:.5f}), max abs error {report.max_abs_error:.3g}")
    if report.classes_lost:
        lost = ", ".join(f"{row['name']} -{row['lost']} ({row['reference_top1']:.0f}% -> {row['candidate_top1']:.0f}%)"
                         for row in report.classes_lost)
        click.echo(f"classes that lost most: {lost}")
    value = report.top1_drop_ci95[1] if report.gate != "estimate" else report.top1_drop
    what = "upper 95% bound of the top-1 drop" if report.gate != "estimate" else "top-1 drop"
    if report.passed:
        click.echo(f"PASSED: {what} {value:+.2f} <= {report.max_top1_drop:g} points")
    else:
        click.echo(f"FAILED: {what} {value:+.2f} > {report.max_top1_drop:g} points")
