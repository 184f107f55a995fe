def main() -> int:
    raise SystemExit("loopqual: not yet implemented")
