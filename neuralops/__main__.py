from neuralops.cli import main

main()
