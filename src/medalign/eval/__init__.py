"""medalign.eval"""
