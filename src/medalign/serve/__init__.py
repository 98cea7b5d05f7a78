"""medalign.serve"""
