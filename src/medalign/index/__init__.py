"""medalign.index"""
