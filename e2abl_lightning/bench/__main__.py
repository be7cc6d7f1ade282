from e2abl_lightning.bench.runner import main

main()
