import dataclasses

import click

from ffx.cli import InputPath, print_json, warn
from ffx.commands.output_options import json_option
from ffx.commands.preprocess_option import naming_the_flag, parse_preprocess, preprocess_option
from ffx.commands.runner_options import RunnerOptionGroup
from ffx.metadata import escape_text

RUNNER = RunnerOptionGroup()


@click.command("predict")
@click.argument("model", type=InputPath(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=InputPath())
@click.option("--topk", type=click.IntRange(min=1), default=5, show_default=True)
@RUNNER
@preprocess_option
@json_option("a JSON list")
def command(model, images, topk, provider, preprocess_text, as_json):
    """Top-k classes for IMAGES (files or folders) with MODEL (engine, ONNX or checkpoint).

    Preprocessing and class names come from the model's metadata.

    \b
    Examples:
      ffx predict model.engine cat.jpg dog.jpg
      ffx predict model.onnx photos/ --topk 3 --json
      ffx predict other_tool.onnx cat.jpg --preprocess preprocess.json
    """
    from ffx.runtime.tasks.predict import predict

    with naming_the_flag():
        predictions = predict(model, images, topk=topk, provider=provider, on_skip=warn,
                              preprocess=parse_preprocess(preprocess_text))
    if as_json:
        print_json([dataclasses.asdict(p) for p in predictions])
        return
    for prediction in predictions:
        # Class names come from the model file: escape control characters before printing them.
        ranked = "  ".join(f"{escape_text(row['name'])} {row['probability']:.1%}" for row in prediction.top)
        click.echo(f"{escape_text(prediction.image)}: {ranked}")
