from pathlib import Path

import click

from ffx.cli import InputPath, print_json
from ffx.commands.output_options import json_option
from ffx.metadata import describe_metadata, escape_text


@click.command("inspect")
@click.argument("path", type=InputPath(dir_okay=False))
@click.option("--no-load", is_flag=True, help="Engines: only read the sidecar, never load the engine on a GPU.")
@click.option("--layers", is_flag=True, help="Engines: print TensorRT's per-layer information (needs a GPU).")
@click.option("--gpu", "gpus", multiple=True, metavar="CC", help="A GPU's compute capability (8.7, SM90, ...; repeat for several): which precisions it runs, which ffx recommends, and whether this model's runs there. Engines default to their targets.")
@json_option()
def command(path, no_load, layers, gpus, as_json):
    """Show what an ONNX model, an engine or a checkpoint contains.

    ONNX: inputs, opset, op histogram, Q/DQ count, precision, ffx metadata. Engine: the sidecar
    (how, where and from what it was built), whether it fits this machine and, where it can be
    loaded, TensorRT's engine inspector per layer.

    \b
    Examples:
      ffx inspect model.int8.onnx
      ffx inspect model.engine --layers
      ffx inspect model.engine.json          # a sidecar alone: never loads the engine
      ffx inspect model.fp8.onnx --gpu 8.7 --gpu 9.0   # FP8 on Jetson Orin? on H100?
    """
    from ffx.compute_capability import parse_compute_capability
    from ffx.runtime.tasks.inspection import (
        guide_capabilities, inspect_file, inspect_sidecar, inspected_sidecar, precision_guide,
    )
    from ffx.runtime.engines.sidecar import ENGINE_SUFFIXES

    for gpu in gpus:
        parse_compute_capability(gpu)  # an unreadable --gpu fails before the file is read

    if path.endswith(".json") and Path(path[:-len(".json")]).suffix in ENGINE_SUFFIXES:
        info = inspect_sidecar(path)  # the engine from its sidecar alone, whether or not it is there
    else:
        info = inspect_file(path, load_engine=not no_load)
    sidecar = inspected_sidecar(info)
    model_precision = info.get("precision") if info["kind"] == "onnx" else (sidecar.precision if sidecar else None)
    info["precision_guide"] = precision_guide(model_precision, list(gpus) or guide_capabilities(sidecar))
    if as_json:
        print_json(info)
        return
    {"onnx": _print_onnx, "engine": _print_engine, "checkpoint": _print_checkpoint}[info["kind"]](info, layers)
    for row in info["precision_guide"]:
        fits = row["model_precision_runs_here"]
        verdict = "" if fits is None else (f"; this {model_precision.upper()} model runs there" if fits else
                                           f"; this {model_precision.upper()} model does NOT run there")
        click.echo(f"precisions on {row['line']}{verdict}")
    if model_precision == "fp8" and not info["precision_guide"]:
        click.echo("FP8 runs on compute capability 8.9 and newer (Ada, Hopper, Blackwell, Thor); "
                   "`--gpu CC` says what a GPU runs")


def _print_onnx(info, _layers):
    opsets = ", ".join(f"{domain} {version}" for domain, version in info["opset"].items())
    precision = info["precision"] + (f" ({info['int8_layers_in_fp8']} layers INT8)" if info["int8_layers_in_fp8"] else "")
    click.echo(f"{info['path']}: ONNX, {info['bytes'] / (1 << 20):.1f} MiB, {precision}, "
               f"{info['parameters']:,} weights, opset {opsets}, producer {escape_text(info['producer'] or '?')}")
    for label, tensors in (("input ", info["inputs"]), ("output", info["outputs"])):
        for tensor in tensors:
            click.echo(f"{label} {escape_text(tensor['name'])} [{' x '.join(map(str, tensor['shape']))}] {tensor['dtype']}")
    click.echo(f"{info['nodes']} nodes: " + ", ".join(f"{op} {n}" for op, n in info["ops"].items()))
    click.echo(f"Q/DQ nodes: {info['qdq_nodes']}" + (
        f" (quantized inputs of: {', '.join(f'{op} {n}' for op, n in info['quantized_inputs_of'].items())})"
        if info["quantized_inputs_of"] else ""))
    click.echo("initializers: " + ", ".join(f"{dtype} {n}" for dtype, n in info["initializer_dtypes"].items()))
    if info["calibration_manifest"]:
        click.echo(f"calibration manifest: {info['calibration_manifest']}")
    for line in describe_metadata(info["metadata"], info["path"], info.get("metadata_error")):
        click.echo(line)
    if info["input_mismatch"]:
        click.echo(f"INVALID: {info['input_mismatch']}")


def _print_engine(info, layers):
    from ffx.runtime.engines.sidecar import describe_build
    from ffx.runtime.tasks.inspection import inspected_sidecar

    if info["engine_present"]:
        click.echo(f"{info['path']}: TensorRT plan, {info['bytes'] / (1 << 20):.1f} MiB, sha256 {info['sha256'][:16]}...")
    else:
        click.echo(f"{info['path']}: TensorRT plan, not here (described by its sidecar alone)")
    if not info["sidecar"]:
        click.echo("no sidecar: where and how it was built is unknown")
        if info["engine_targets"]:
            click.echo(f"a TensorRT-RTX plan: its header lists compute capability {', '.join(info['engine_targets'])}")
    else:
        sidecar = inspected_sidecar(info)
        profile = sidecar.profile
        tf32 = {True: "TF32 allowed", False: "TF32 off", None: "TF32 not recorded"}[sidecar.builder.tf32]
        click.echo(f"built by {describe_build(sidecar)}, {sidecar.precision}, {tf32}, in {sidecar.build_seconds} s "
                   f"at {sidecar.built_at} (ffx {sidecar.ffx_version})")
        click.echo(f"profile {profile.input}: min {profile.min} opt {profile.opt} max {profile.max}")
        click.echo(f"from {sidecar.onnx.file} (sha256 {sidecar.onnx.sha256[:16]}...)")
        if sidecar.calibration_manifest:
            click.echo(f"calibration manifest {sidecar.calibration_manifest.file}")
        if info["sidecar_matches_engine"] is False:
            click.echo("WARNING: the sidecar describes a different engine file (sha256 differs): rebuild both")
        if info["engine_targets"] and sidecar.backend == "tensorrt-rtx" and info["engine_targets"] != sidecar.targets:
            click.echo(f"WARNING: the engine itself lists compute capability {', '.join(info['engine_targets'])}, "
                       f"the sidecar {', '.join(sidecar.targets)}")
        click.echo(f"on this machine: {info['compatibility']}")
        for line in describe_metadata(sidecar.metadata, info["sidecar_file"]):
            click.echo(line)
    if info["layers"] is not None:
        entries = info["layers"].get("Layers", [])
        click.echo(f"{len(entries)} layers (TensorRT engine inspector)")
        if layers:
            for layer in entries:
                if isinstance(layer, dict):
                    click.echo(f"  {layer.get('Name')}: {layer.get('LayerType')} {layer.get('TacticName', '')}")
                else:
                    click.echo(f"  {layer}")
    else:
        click.echo(f"layers: unavailable ({info['layers_unavailable']})")


def _print_checkpoint(info, _layers):
    click.echo(f"{info['path']}: PyTorch checkpoint, {info['arch']}, {info['parameters']:,} parameters, "
               f"weights from {info['weights']}")
    config = info["config"]
    click.echo("config: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    for line in describe_metadata(info["metadata"], info["path"]):
        click.echo(line)
