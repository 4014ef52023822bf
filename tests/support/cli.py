"""The CLI as users run it (a subprocess), and a few stories to train on."""
import subprocess
import sys


def run_cli(*args, input_text=None):
    """Run `mlxspec` as users do (a subprocess), returning (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-c", "from mlx_spec.cli.app import main; main()", *args],
                          capture_output=True, text=True, input=input_text, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


STORIES = "\n".join(
    f"Once upon a time, {name} had a {thing}. {name} liked to play with the {thing} every day.\n\n"
    f"One day the {thing} was lost. {name} looked and looked, and then found it under the bed."
    for name, thing in [("Lily", "ball"), ("Tom", "kite"), ("Mia", "cat"), ("Ben", "drum"),
                        ("Sam", "boat"), ("Ann", "doll")] * 8)
