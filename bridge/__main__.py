from bridge.cli import run

run()
