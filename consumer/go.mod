module github.com/pulseboard/pulseboard/consumer

go 1.26.8
