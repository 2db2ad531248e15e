from image_analyzer.cli import main

main()
