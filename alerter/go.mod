module github.com/pulseboard/pulseboard/alerter

go 1.26.8
