from memory.cli import run

run()
