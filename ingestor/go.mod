module github.com/pulseboard/pulseboard/ingestor

go 1.26.8
