"""placeholder"""
import click

@click.group()
def cli() -> None:
    pass

def main() -> None:
    cli()
