from nfp.cli import run

run()
