"""The contract every remote implements (XCon, optional abilities, errors) and the one safe source-file opener."""
