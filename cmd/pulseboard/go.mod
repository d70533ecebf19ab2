module github.com/pulseboard/pulseboard/cmd/pulseboard

go 1.26.8
